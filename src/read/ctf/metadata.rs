//! A CTF 1.8 trace's metadata: the TSDL text LTTng-UST writes (in
//! packets or plain), parsed into its types, clock and event classes.

use std::collections::HashMap;

// --------------------------------------------------------------------------
// The metadata: TSDL, the subset LTTng-UST writes

#[derive(Clone, Debug)]
pub(super) enum Type {
    Int {
        size: u32,
        align: u32,
        signed: bool,
        clock: bool,
    },
    Str,
    Struct(Vec<(String, Type)>, u32),
    /// An enumeration: its integer type (the labels are not needed).
    Enum(Box<Type>),
    Variant(String, Vec<(String, Type)>),
    Array(Box<Type>, usize),
    /// A sequence: its length is the integer field just before it (as
    /// LTTng-UST lays them out).
    Seq(Box<Type>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Word(String),
    Num(u64),
    Str(String),
    Punct(&'static str),
}

pub(super) fn tokens(text: &str) -> Result<Vec<Tok>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() || c == 0 {
            i += 1;
        } else if b[i..].starts_with(b"/*") {
            i = text[i + 2..]
                .find("*/")
                .map(|n| i + n + 4)
                .ok_or("open comment")?;
        } else if b[i..].starts_with(b"//") {
            i = text[i..].find('\n').map_or(b.len(), |n| i + n);
        } else if c == b'"' {
            let end = text[i + 1..].find('"').ok_or("open string")? + i + 1;
            out.push(Tok::Str(text[i + 1..end].to_owned()));
            i = end + 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric()) {
                i += 1;
            }
            let s = &text[start..i];
            let n = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                u64::from_str_radix(hex, 16)
            } else {
                s.trim_end_matches(['u', 'U', 'l', 'L']).parse()
            };
            out.push(Tok::Num(n.map_err(|_| format!("bad number {s}"))?));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'_'
                    || (b[i] == b'.' && b.get(i + 1).is_some_and(|n| n.is_ascii_alphabetic())))
            {
                i += 1;
            }
            out.push(Tok::Word(text[start..i].to_owned()));
        } else {
            let p = [
                ":=", "...", "{", "}", ";", "=", "[", "]", "<", ">", "(", ")", ",", ":", "-",
            ]
            .into_iter()
            .find(|p| b[i..].starts_with(p.as_bytes()))
            .ok_or_else(|| format!("unexpected {:?}", c as char))?;
            out.push(Tok::Punct(p));
            i += p.len();
        }
    }
    Ok(out)
}

pub(super) struct Parser {
    pub(super) toks: Vec<Tok>,
    pub(super) at: usize,
    pub(super) aliases: HashMap<String, Type>,
    pub(super) structs: HashMap<String, Type>,
}

#[derive(Default)]
pub(super) struct Metadata {
    pub(super) little_endian: bool,
    pub(super) packet_header: Option<Type>,
    pub(super) freq: u64,
    pub(super) offset_ns: i128,
    pub(super) events: HashMap<(u64, u64), (String, Type)>,
    pub(super) streams: HashMap<u64, StreamClass>,
}

#[derive(Clone)]
pub(super) struct StreamClass {
    pub(super) header: Option<Type>,
    pub(super) context: Option<Type>,
    pub(super) event_context: Option<Type>,
}

impl Parser {
    pub(super) fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    pub(super) fn next(&mut self) -> Result<Tok, String> {
        let t = self
            .toks
            .get(self.at)
            .cloned()
            .ok_or("metadata ends early")?;
        self.at += 1;
        Ok(t)
    }
    pub(super) fn punct(&mut self, p: &str) -> Result<(), String> {
        match self.next()? {
            Tok::Punct(q) if q == p => Ok(()),
            t => Err(format!("expected {p}, found {t:?}")),
        }
    }
    pub(super) fn is(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Tok::Punct(q)) if *q == p)
    }
    pub(super) fn word(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => Err(format!("expected a name, found {t:?}")),
        }
    }
    pub(super) fn skip_block(&mut self) -> Result<(), String> {
        self.punct("{")?;
        let mut depth = 1;
        while depth > 0 {
            match self.next()? {
                Tok::Punct("{") => depth += 1,
                Tok::Punct("}") => depth -= 1,
                _ => {}
            }
        }
        Ok(())
    }
    /// `key = value;` pairs up to `}` (values: numbers, words, strings).
    pub(super) fn attrs(&mut self) -> Result<HashMap<String, Tok>, String> {
        self.punct("{")?;
        let mut out = HashMap::new();
        while !self.is("}") {
            let key = self.word()?;
            self.punct("=")?;
            let neg = self.is("-");
            if neg {
                self.next()?;
            }
            let mut value = self.next()?;
            if neg {
                if let Tok::Num(n) = value {
                    value = Tok::Num(n.wrapping_neg());
                }
            }
            self.punct(";")?;
            out.insert(key, value);
        }
        self.punct("}")?;
        Ok(out)
    }

    pub(super) fn num(attrs: &HashMap<String, Tok>, key: &str) -> Option<u64> {
        match attrs.get(key) {
            Some(Tok::Num(n)) => Some(*n),
            _ => None,
        }
    }

    pub(super) fn ty(&mut self) -> Result<Type, String> {
        let word = self.word()?;
        match word.as_str() {
            "integer" => {
                let a = self.attrs()?;
                let size = Self::num(&a, "size").ok_or("integer without size")? as u32;
                let signed = matches!(a.get("signed"), Some(Tok::Num(1)))
                    || matches!(a.get("signed"), Some(Tok::Word(w)) if w == "true");
                if let Some(Tok::Word(order)) = a.get("byte_order") {
                    if order != "le" && order != "native" {
                        return Err("big-endian integer".into());
                    }
                }
                Ok(Type::Int {
                    size,
                    align: Self::num(&a, "align").unwrap_or(1) as u32,
                    signed,
                    clock: a.contains_key("map"),
                })
            }
            "string" => {
                if self.is("{") {
                    self.attrs()?;
                }
                Ok(Type::Str)
            }
            "struct" => {
                let name = match self.peek() {
                    Some(Tok::Word(_)) => Some(self.word()?),
                    _ => None,
                };
                if !self.is("{") {
                    let name = name.ok_or("struct without a body")?;
                    return self
                        .structs
                        .get(&name)
                        .cloned()
                        .ok_or(format!("no struct {name}"));
                }
                self.punct("{")?;
                let fields = self.fields()?;
                let mut align = fields.iter().map(|(_, t)| align_of(t)).max().unwrap_or(8);
                if matches!(self.peek(), Some(Tok::Word(w)) if w == "align") {
                    self.next()?;
                    self.punct("(")?;
                    match self.next()? {
                        Tok::Num(n) => align = align.max(n as u32),
                        t => return Err(format!("bad align {t:?}")),
                    }
                    self.punct(")")?;
                }
                let t = Type::Struct(fields, align);
                if let Some(name) = name {
                    self.structs.insert(name, t.clone());
                }
                Ok(t)
            }
            "enum" => {
                if let Some(Tok::Word(_)) = self.peek() {
                    self.next()?;
                }
                self.punct(":")?;
                let base = self.alias_or_ty()?;
                self.skip_block()?;
                Ok(Type::Enum(Box::new(base)))
            }
            "variant" => {
                if let Some(Tok::Word(_)) = self.peek() {
                    self.next()?;
                }
                self.punct("<")?;
                let tag = self.word()?;
                self.punct(">")?;
                self.punct("{")?;
                let fields = self.fields()?;
                Ok(Type::Variant(tag, fields))
            }
            _ => {
                self.at -= 1;
                self.alias_or_ty()
            }
        }
    }

    /// A type alias name (one or more words, e.g. `unsigned long`), or a type.
    pub(super) fn alias_or_ty(&mut self) -> Result<Type, String> {
        if let Some(Tok::Word(w)) = self.peek() {
            if !matches!(
                w.as_str(),
                "integer" | "string" | "struct" | "enum" | "variant"
            ) {
                let mut name = self.word()?;
                while !self.aliases.contains_key(&name) {
                    match self.peek() {
                        Some(Tok::Word(w)) => name = format!("{name} {w}"),
                        _ => return Err(format!("unknown type {name}")),
                    }
                    self.next()?;
                }
                return Ok(self.aliases[&name].clone());
            }
        }
        self.ty()
    }

    /// Field declarations up to `}`: TYPE NAME[N]...;
    pub(super) fn fields(&mut self) -> Result<Vec<(String, Type)>, String> {
        let mut out = Vec::new();
        while !self.is("}") {
            // The type's words, then the field's name: an alias of several
            // words is the longest known prefix.
            let start = self.at;
            let mut words = Vec::new();
            while let Some(Tok::Word(w)) = self.peek() {
                words.push(w.clone());
                self.next()?;
            }
            let mut t = if words.len() >= 2
                && self
                    .aliases
                    .contains_key(&words[..words.len() - 1].join(" "))
            {
                self.aliases[&words[..words.len() - 1].join(" ")].clone()
            } else {
                self.at = start;
                self.ty()?
            };
            let name = if self.at == start + words.len() && words.len() >= 2 {
                words.last().cloned().unwrap_or_default()
            } else {
                self.word()?
            };
            let mut dims = Vec::new();
            while self.is("[") {
                self.next()?;
                match self.next()? {
                    Tok::Num(n) => dims.push(Some(n as usize)),
                    Tok::Word(len) if out.last().is_some_and(|(n, _)| *n == len) => dims.push(None),
                    t => return Err(format!("sequence {t:?} (not supported)")),
                }
                self.punct("]")?;
            }
            for n in dims.into_iter().rev() {
                t = match n {
                    Some(n) => Type::Array(Box::new(t), n),
                    None => Type::Seq(Box::new(t)),
                };
            }
            self.punct(";")?;
            out.push((name, t));
        }
        self.punct("}")?;
        Ok(out)
    }

    pub(super) fn metadata(&mut self) -> Result<Metadata, String> {
        let mut m = Metadata {
            freq: 1_000_000_000,
            ..Default::default()
        };
        while let Some(tok) = self.peek().cloned() {
            let Tok::Word(w) = tok else {
                return Err(format!("unexpected {tok:?}"));
            };
            match w.as_str() {
                "typealias" => {
                    self.next()?;
                    let t = self.ty()?;
                    self.punct(":=")?;
                    let mut name = self.word()?;
                    while let Some(Tok::Word(more)) = self.peek() {
                        name = format!("{name} {more}");
                        self.next()?;
                    }
                    self.aliases.insert(name, t);
                }
                "trace" => {
                    self.next()?;
                    self.punct("{")?;
                    while !self.is("}") {
                        let key = self.word()?;
                        if self.is(":=") {
                            self.next()?;
                            let t = self.alias_or_ty()?;
                            if key == "packet.header" {
                                m.packet_header = Some(t);
                            }
                        } else {
                            self.punct("=")?;
                            let v = self.next()?;
                            if key == "byte_order" {
                                m.little_endian = v == Tok::Word("le".into());
                            }
                        }
                        self.punct(";")?;
                    }
                    self.punct("}")?;
                }
                "clock" => {
                    self.next()?;
                    let a = self.attrs()?;
                    m.freq = Self::num(&a, "freq").unwrap_or(1_000_000_000).max(1);
                    let cycles = Self::num(&a, "offset").unwrap_or(0) as i128;
                    let secs = Self::num(&a, "offset_s").unwrap_or(0) as i64 as i128;
                    m.offset_ns = secs * 1_000_000_000 + cycles * 1_000_000_000 / m.freq as i128;
                }
                "struct" => {
                    self.ty()?;
                }
                "event" | "stream" => {
                    self.next()?;
                    self.punct("{")?;
                    let (mut name, mut id, mut stream_id) = (String::new(), 0, 0);
                    let mut types: HashMap<String, Type> = HashMap::new();
                    while !self.is("}") {
                        let key = self.word()?;
                        if self.is(":=") {
                            self.next()?;
                            types.insert(key, self.alias_or_ty()?);
                        } else {
                            self.punct("=")?;
                            match (key.as_str(), self.next()?) {
                                ("name", Tok::Str(s) | Tok::Word(s)) => name = s,
                                ("id", Tok::Num(n)) => id = n,
                                ("stream_id", Tok::Num(n)) => stream_id = n,
                                _ => {}
                            }
                        }
                        self.punct(";")?;
                    }
                    self.punct("}")?;
                    if w == "event" {
                        let fields = types.remove("fields").unwrap_or(Type::Struct(vec![], 8));
                        m.events.insert((stream_id, id), (name, fields));
                    } else {
                        m.streams.insert(
                            id,
                            StreamClass {
                                header: types.remove("event.header"),
                                context: types.remove("packet.context"),
                                event_context: types.remove("event.context"),
                            },
                        );
                    }
                }
                "env" | "callsite" => {
                    self.next()?;
                    self.skip_block()?;
                }
                other => return Err(format!("unsupported metadata block {other}")),
            }
            if self.is(";") {
                self.next()?;
            }
        }
        Ok(m)
    }
}

pub(super) fn align_of(t: &Type) -> u32 {
    match t {
        Type::Int { align, .. } => *align,
        Type::Str => 8,
        Type::Struct(_, a) => *a,
        Type::Enum(base) => align_of(base),
        Type::Variant(_, opts) => opts.iter().map(|(_, t)| align_of(t)).max().unwrap_or(8),
        Type::Array(e, _) | Type::Seq(e) => align_of(e),
    }
}

/// The metadata file's text: LTTng writes it in packets (a 37-byte
/// header, magic 0x75D11D57, then text), or as plain text.
pub(super) fn metadata_text(data: &[u8]) -> Result<String, String> {
    if data.len() >= 4 && u32::from_le_bytes(data[0..4].try_into().unwrap()) == 0x75D1_1D57 {
        let mut text = Vec::new();
        let mut at = 0;
        while at + 37 <= data.len() {
            let word = |o: usize| u32::from_le_bytes(data[at + o..at + o + 4].try_into().unwrap());
            if word(0) != 0x75D1_1D57 {
                return Err("bad metadata packet".into());
            }
            let content = word(24) as usize / 8;
            let packet = word(28) as usize / 8;
            if content < 37 || packet < content || at + content > data.len() {
                break;
            }
            text.extend_from_slice(&data[at + 37..at + content]);
            at += packet;
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    } else if data.first() == Some(&0x1E) {
        Err("CTF 2 metadata (LTTng 2.15 and later): not for this reader".into())
    } else if data.starts_with(b"/* CTF") {
        Ok(String::from_utf8_lossy(data).into_owned())
    } else {
        Err("not CTF metadata".into())
    }
}
