//! A reader of LTTng-UST's CTF 1.8 traces for `pyust report`, several
//! times faster than going through libbabeltrace2 (whose CTF decoder
//! builds an object per field of every event).
//!
//! It understands the metadata LTTng-UST writes — integers, strings,
//! character arrays, LTTng's two event headers (compact: 5-bit id and
//! 27-bit time; large: 16 and 32), little-endian, byte-aligned fields —
//! and reads each data stream packet by packet, merging the streams in
//! time order as babeltrace2's muxer does. Anything else in a trace (a
//! kernel trace beside it, big-endian data, sequences, floats, bit
//! fields outside the header, a packet it cannot make sense of) makes
//! [`read`] answer `Ok(Some(reason))` before it hands over a single
//! message, and `report` reads the trace through libbabeltrace2 instead.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::ffi::bt2::{Discarded, Event, Kind, Message};

// --------------------------------------------------------------------------
// The metadata: TSDL, the subset LTTng-UST writes

#[derive(Clone, Debug)]
enum Type {
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
enum Tok {
    Word(String),
    Num(u64),
    Str(String),
    Punct(&'static str),
}

fn tokens(text: &str) -> Result<Vec<Tok>, String> {
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

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    aliases: HashMap<String, Type>,
    structs: HashMap<String, Type>,
}

#[derive(Default)]
struct Metadata {
    little_endian: bool,
    packet_header: Option<Type>,
    freq: u64,
    offset_ns: i128,
    events: HashMap<(u64, u64), (String, Type)>,
    streams: HashMap<u64, StreamClass>,
}

#[derive(Clone)]
struct StreamClass {
    header: Option<Type>,
    context: Option<Type>,
    event_context: Option<Type>,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    fn next(&mut self) -> Result<Tok, String> {
        let t = self
            .toks
            .get(self.at)
            .cloned()
            .ok_or("metadata ends early")?;
        self.at += 1;
        Ok(t)
    }
    fn punct(&mut self, p: &str) -> Result<(), String> {
        match self.next()? {
            Tok::Punct(q) if q == p => Ok(()),
            t => Err(format!("expected {p}, found {t:?}")),
        }
    }
    fn is(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Tok::Punct(q)) if *q == p)
    }
    fn word(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => Err(format!("expected a name, found {t:?}")),
        }
    }
    fn skip_block(&mut self) -> Result<(), String> {
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
    fn attrs(&mut self) -> Result<HashMap<String, Tok>, String> {
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

    fn num(attrs: &HashMap<String, Tok>, key: &str) -> Option<u64> {
        match attrs.get(key) {
            Some(Tok::Num(n)) => Some(*n),
            _ => None,
        }
    }

    fn ty(&mut self) -> Result<Type, String> {
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
    fn alias_or_ty(&mut self) -> Result<Type, String> {
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
    fn fields(&mut self) -> Result<Vec<(String, Type)>, String> {
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

    fn metadata(&mut self) -> Result<Metadata, String> {
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

fn align_of(t: &Type) -> u32 {
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
fn metadata_text(data: &[u8]) -> Result<String, String> {
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

// --------------------------------------------------------------------------
// Layouts compiled for decoding

/// Where a field's value goes.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    None,
    CoName,
    CoQualname,
    Module,
    CoFilename,
    Line,
    ExcType,
    Vpid,
    Vtid,
    Procname,
    Id,
    Tid,
    Base,
    Data,
    Span,
    Ticks,
}

#[derive(Clone, Copy)]
enum Op {
    /// A byte-aligned integer of 1, 2, 4 or 8 bytes.
    Int {
        align: usize,
        bytes: usize,
        signed: bool,
        slot: Slot,
    },
    Str {
        slot: Slot,
    },
    /// A fixed array of bytes (text up to its first NUL).
    Chars {
        align: usize,
        len: usize,
        slot: Slot,
    },
    /// A sequence of bytes, as long as the integer before it says.
    Bytes {
        align: usize,
        slot: Slot,
    },
}

fn slot(name: &str) -> Slot {
    match name.strip_prefix('_').unwrap_or(name) {
        "co_name" => Slot::CoName,
        "co_qualname" => Slot::CoQualname,
        "module" => Slot::Module,
        "co_filename" => Slot::CoFilename,
        "co_firstlineno" | "lineno" => Slot::Line,
        "exc_type" => Slot::ExcType,
        "vpid" => Slot::Vpid,
        "vtid" => Slot::Vtid,
        "procname" => Slot::Procname,
        "id" => Slot::Id,
        "tid" => Slot::Tid,
        "base" => Slot::Base,
        "data" => Slot::Data,
        "span" => Slot::Span,
        "ticks" => Slot::Ticks,
        _ => Slot::None,
    }
}

/// The ops that decode a structure of byte-aligned fields.
fn compile(t: &Type, ops: &mut Vec<Op>, name: &str) -> Result<(), String> {
    match t {
        Type::Struct(fields, _) => {
            for (name, t) in fields {
                compile(t, ops, name)?;
            }
            Ok(())
        }
        Type::Int {
            size,
            align,
            signed,
            ..
        } if size % 8 == 0 && align % 8 == 0 && matches!(size, 8 | 16 | 32 | 64) => {
            ops.push(Op::Int {
                align: (*align / 8) as usize,
                bytes: (*size / 8) as usize,
                signed: *signed,
                slot: slot(name),
            });
            Ok(())
        }
        Type::Str => {
            ops.push(Op::Str { slot: slot(name) });
            Ok(())
        }
        Type::Array(elem, len) => match **elem {
            Type::Int { size: 8, align, .. } if align % 8 == 0 => {
                ops.push(Op::Chars {
                    align: (align / 8) as usize,
                    len: *len,
                    slot: slot(name),
                });
                Ok(())
            }
            _ => Err(format!("array field {name} (not supported)")),
        },
        Type::Seq(elem) => match **elem {
            Type::Int { size: 8, align, .. } if align % 8 == 0 => {
                ops.push(Op::Bytes {
                    align: (align / 8) as usize,
                    slot: slot(name),
                });
                Ok(())
            }
            _ => Err(format!("sequence field {name} (not supported)")),
        },
        _ => Err(format!("field {name} (not supported)")),
    }
}

/// LTTng's event headers: (id bits, compact timestamp bits).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Header {
    Compact,
    Large,
}

fn header_kind(t: &Type) -> Result<Header, String> {
    let Type::Struct(fields, _) = t else {
        return Err("event header is not a structure".into());
    };
    let int_size = |t: &Type| match t {
        Type::Int { size, clock, .. } => Some((*size, *clock)),
        _ => None,
    };
    let [(id_name, Type::Enum(base)), (_, Type::Variant(tag, options))] = &fields[..] else {
        return Err("unknown event header".into());
    };
    let find = |n: &str| options.iter().find(|(name, _)| name == n).map(|(_, t)| t);
    let (Some(Type::Struct(compact, _)), Some(Type::Struct(extended, _))) =
        (find("compact"), find("extended"))
    else {
        return Err("unknown event header".into());
    };
    let ext_ok = extended.len() == 2
        && int_size(&extended[0].1) == Some((32, false))
        && int_size(&extended[1].1) == Some((64, true));
    let shape = (
        int_size(base),
        compact.len(),
        compact.first().and_then(|(_, t)| int_size(t)),
    );
    if tag != id_name || !ext_ok {
        return Err("unknown event header".into());
    }
    match shape {
        (Some((5, _)), 1, Some((27, true))) => Ok(Header::Compact),
        (Some((16, _)), 1, Some((32, true))) => Ok(Header::Large),
        _ => Err("unknown event header".into()),
    }
}

// --------------------------------------------------------------------------
// Data streams

/// The values of a packet header and context read by name.
fn read_struct(
    t: &Type,
    data: &[u8],
    at: &mut usize,
    out: &mut HashMap<String, u64>,
) -> Result<(), String> {
    let Type::Struct(fields, align) = t else {
        return Err("packet header/context is not a structure".into());
    };
    *at = align_up(*at, (*align / 8).max(1) as usize);
    for (name, t) in fields {
        match t {
            Type::Int { size, align, .. } if size % 8 == 0 && align % 8 == 0 => {
                let bytes = (*size / 8) as usize;
                *at = align_up(*at, (*align / 8).max(1) as usize);
                let v = le(data.get(*at..*at + bytes).ok_or("packet too short")?);
                out.insert(name.strip_prefix('_').unwrap_or(name).to_owned(), v);
                *at += bytes;
            }
            Type::Array(elem, n) => match **elem {
                Type::Int { size: 8, .. } => *at += n,
                _ => return Err("unsupported packet field".into()),
            },
            Type::Struct(..) => read_struct(t, data, at, out)?,
            _ => return Err("unsupported packet field".into()),
        }
    }
    Ok(())
}

fn align_up(at: usize, align: usize) -> usize {
    if align <= 1 {
        at
    } else {
        at.div_ceil(align) * align
    }
}

fn le(b: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(word)
}

struct Class {
    kind: Option<Kind>,
    ops: Vec<Op>,
}

/// How the packets and events of one stream class are laid out.
struct Layout {
    header: Header,
    packet_context: Type,
    event_context: Vec<Op>,
    /// By event id.
    classes: Vec<Option<Class>>,
}

struct TraceInfo {
    meta: Metadata,
    /// Its host (`bt2::intern_host`), from the metadata's environment.
    host: u32,
    layouts: Vec<Layout>,
    /// Stream class id to `layouts` index.
    by_class: HashMap<u64, usize>,
}

impl TraceInfo {
    fn layout(&self, class: u64) -> Result<&Layout, String> {
        self.by_class
            .get(&class)
            .map(|&i| &self.layouts[i])
            .ok_or_else(|| "packet of an unknown stream class".to_owned())
    }
}

/// One data stream: its files (tracefile rotation splits a stream in
/// several, oldest first), and where the reading is.
struct Stream {
    trace: usize,
    index: usize,
    name: String,
    files: Vec<PathBuf>,
    file: usize,
    reader: Option<BufReader<File>>,
    packet: Vec<u8>,
    /// The next event's offset in `packet`, and where its events end.
    at: usize,
    end: usize,
    /// The current packet's layout (index in `TraceInfo::layouts`).
    layout: usize,
    /// Whether the current packet's file ends before its content does.
    cut: bool,
    /// The clock, in cycles, as the last timestamp left it.
    clock: u64,
    discarded: u64,
    last_end: Option<u64>,
    pending: Option<Discarded>,
    /// The next event, decoded: time, class, and field spans in `packet`.
    next: Option<Decoded>,
}

#[derive(Clone, Copy, Default)]
struct Span(u32, u32);

struct Decoded {
    ns: i64,
    /// The event id (its class in the stream's layout).
    id: usize,
    strs: [Span; 6],
    line: i64,
    vpid: i64,
    vtid: i64,
    def_id: i64,
    /// A batch's base time (cycles) and records.
    base: Option<u64>,
    data: Span,
    span: i64,
    ticks: i64,
}

const S_NAME: usize = 0;
const S_QUALNAME: usize = 1;
const S_MODULE: usize = 2;
const S_FILENAME: usize = 3;
const S_EXC: usize = 4;
const S_PROCNAME: usize = 5;

impl Stream {
    /// Loads the next packet (of this file or the next); false at the end.
    fn load_packet(&mut self, info: &TraceInfo) -> Result<bool, String> {
        loop {
            if self.reader.is_none() {
                let Some(path) = self.files.get(self.file) else {
                    return Ok(false);
                };
                let f =
                    File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                self.reader = Some(BufReader::with_capacity(1 << 16, f));
            }
            let reader = self.reader.as_mut().expect("opened above");
            // Header and context fit in the first 4 KiB of a packet.
            let mut head = vec![0u8; 4096];
            let got = read_up_to(reader, &mut head)?;
            if got == 0 {
                self.reader = None;
                self.file += 1;
                continue;
            }
            head.truncate(got);
            let mut values = HashMap::new();
            let mut at = 0;
            if let Some(h) = &info.meta.packet_header {
                read_struct(h, &head, &mut at, &mut values)?;
            }
            let class = values.get("stream_id").copied().unwrap_or(0);
            read_struct(
                &info.layout(class)?.packet_context,
                &head,
                &mut at,
                &mut values,
            )?;
            let size = values
                .get("packet_size")
                .copied()
                .ok_or("packet without a size")? as usize
                / 8;
            let content = values
                .get("content_size")
                .copied()
                .unwrap_or(size as u64 * 8) as usize
                / 8;
            if size < got || content > size || content < at {
                if size < got && size >= at && content <= size {
                    // A small packet: give back what belongs to the next one.
                    reader
                        .seek(SeekFrom::Current(size as i64 - got as i64))
                        .map_err(|e| e.to_string())?;
                    head.truncate(size);
                } else {
                    return Err("packet sizes do not add up".into());
                }
            }
            self.packet.clear();
            self.packet.extend_from_slice(&head);
            if size > self.packet.len() {
                let have = self.packet.len();
                self.packet.resize(size, 0);
                let got = read_up_to(reader, &mut self.packet[have..])?;
                if got < size - have {
                    // A packet cut short (the disk filled, a crash): its
                    // whole events only.
                    self.packet.truncate(have + got);
                }
            }
            self.cut = content > self.packet.len();
            self.layout = info.by_class[&class];
            self.at = at;
            self.end = content.min(self.packet.len());
            let begin = values.get("timestamp_begin").copied().unwrap_or(self.clock);
            let end = values.get("timestamp_end").copied();
            self.clock = begin;
            if let Some(total) = values.get("events_discarded").copied() {
                // A stream's first packet sets the count's baseline (its
                // older packets may be gone), as babeltrace2 does.
                if self.last_end.is_none() {
                    self.discarded = total;
                }
                if total > self.discarded {
                    let to_ns = |c: u64| ns(&info.meta, c);
                    self.pending = Some(Discarded {
                        count: total - self.discarded,
                        stream: self.index,
                        stream_name: self.name.clone(),
                        begin_ns: Some(to_ns(self.last_end.unwrap_or(begin))),
                        end_ns: end.map(to_ns),
                    });
                }
                self.discarded = total;
            }
            self.last_end = end.or(self.last_end);
            return Ok(true);
        }
    }

    /// Decodes the next event into `self.next` (None at the end).
    fn advance(&mut self, info: &TraceInfo) -> Result<(), String> {
        self.next = None;
        loop {
            if self.at >= self.end {
                if !self.load_packet(info)? {
                    return Ok(());
                }
                continue;
            }
            match self.decode(info) {
                Ok(d) => {
                    self.next = Some(d);
                    return Ok(());
                }
                // The end of a packet cut short: its last event is partial.
                Err(_) if self.cut => self.at = self.end,
                Err(e) => return Err(e),
            }
        }
    }

    /// The event at `self.at`, which moves past it.
    fn decode(&mut self, info: &TraceInfo) -> Result<Decoded, String> {
        let layout = &info.layouts[self.layout];
        let p = &self.packet[..self.end];
        let mut at = self.at;
        let need = |at: usize, n: usize| -> Result<(), String> {
            if at + n > p.len() {
                Err("event beyond its packet".into())
            } else {
                Ok(())
            }
        };
        let (id, ts, bits) = match layout.header {
            Header::Compact => {
                need(at, 4)?;
                let w = le(&p[at..at + 4]);
                if w & 31 == 31 {
                    need(at, 13)?;
                    let r = (le(&p[at + 1..at + 5]), le(&p[at + 5..at + 13]), 64);
                    at += 13;
                    r
                } else {
                    at += 4;
                    (w & 31, w >> 5, 27)
                }
            }
            Header::Large => {
                need(at, 6)?;
                let id = le(&p[at..at + 2]);
                if id == 65535 {
                    need(at, 14)?;
                    let r = (le(&p[at + 2..at + 6]), le(&p[at + 6..at + 14]), 64);
                    at += 14;
                    r
                } else {
                    let r = (id, le(&p[at + 2..at + 6]), 32);
                    at += 6;
                    r
                }
            }
        };
        self.clock = if bits == 64 {
            ts
        } else {
            let mask = (1u64 << bits) - 1;
            let mut base = self.clock;
            if ts < base & mask {
                base = base.wrapping_add(1 << bits);
            }
            (base & !mask) | ts
        };
        let class = layout
            .classes
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or("event of an unknown class")?;
        let mut d = Decoded {
            ns: ns(&info.meta, self.clock),
            id: id as usize,
            strs: [Span::default(); 6],
            line: 0,
            vpid: 0,
            vtid: 0,
            def_id: 0,
            base: None,
            data: Span::default(),
            span: 0,
            ticks: 0,
        };
        run(&layout.event_context, p, &mut at, &mut d)?;
        run(&class.ops, p, &mut at, &mut d)?;
        self.at = at;
        Ok(d)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(got)
}

fn ns(meta: &Metadata, cycles: u64) -> i64 {
    if meta.freq == 1_000_000_000 {
        (meta.offset_ns + cycles as i128) as i64
    } else {
        (meta.offset_ns + cycles as i128 * 1_000_000_000 / meta.freq as i128) as i64
    }
}

fn run(ops: &[Op], p: &[u8], at: &mut usize, d: &mut Decoded) -> Result<(), String> {
    let mut last_int = 0;
    for op in ops {
        match *op {
            Op::Int {
                align,
                bytes,
                signed,
                slot,
            } => {
                let a = align_up(*at, align);
                let raw = le(p.get(a..a + bytes).ok_or("event beyond its packet")?);
                let v = if signed && bytes < 8 {
                    let shift = 64 - 8 * bytes as u32;
                    ((raw << shift) as i64) >> shift
                } else {
                    raw as i64
                };
                match slot {
                    Slot::Line => d.line = v,
                    Slot::Vpid => d.vpid = v,
                    Slot::Vtid | Slot::Tid => d.vtid = v,
                    Slot::Id => d.def_id = v,
                    Slot::Base => d.base = Some(raw),
                    Slot::Span => d.span = v,
                    Slot::Ticks => d.ticks = v,
                    _ => {}
                }
                last_int = raw;
                *at = a + bytes;
            }
            Op::Str { slot } => {
                let len = memchr::memchr(0, &p[*at..]).ok_or("string beyond its packet")?;
                put(d, slot, Span(*at as u32, len as u32));
                *at += len + 1;
            }
            Op::Chars { align, len, slot } => {
                let a = align_up(*at, align);
                let bytes = p.get(a..a + len).ok_or("event beyond its packet")?;
                let text = bytes.iter().position(|&b| b == 0).unwrap_or(len);
                put(d, slot, Span(a as u32, text as u32));
                *at = a + len;
            }
            Op::Bytes { align, slot } => {
                let a = align_up(*at, align);
                let len = last_int as usize;
                if a + len > p.len() {
                    return Err("event beyond its packet".into());
                }
                if slot == Slot::Data {
                    d.data = Span(a as u32, len as u32);
                }
                *at = a + len;
            }
        }
    }
    Ok(())
}

fn put(d: &mut Decoded, slot: Slot, span: Span) {
    let i = match slot {
        Slot::CoName => S_NAME,
        Slot::CoQualname => S_QUALNAME,
        Slot::Module => S_MODULE,
        Slot::CoFilename => S_FILENAME,
        Slot::ExcType => S_EXC,
        Slot::Procname => S_PROCNAME,
        _ => return,
    };
    d.strs[i] = span;
}

fn text(p: &[u8], s: Span) -> &str {
    let bytes = &p[s.0 as usize..(s.0 + s.1) as usize];
    std::str::from_utf8(bytes).unwrap_or("?")
}

// --------------------------------------------------------------------------

fn open_trace(dir: &Path) -> Result<TraceInfo, String> {
    let data = std::fs::read(dir.join("metadata")).map_err(|e| e.to_string())?;
    let mut parser = Parser {
        toks: tokens(&metadata_text(&data)?)?,
        at: 0,
        aliases: HashMap::new(),
        structs: HashMap::new(),
    };
    let meta = parser.metadata()?;
    if !meta.little_endian {
        return Err("big-endian trace".into());
    }
    let mut layouts = Vec::new();
    let mut by_class = HashMap::new();
    for (&id, s) in &meta.streams {
        let header = header_kind(s.header.as_ref().ok_or("stream without event header")?)?;
        let packet_context = s.context.clone().ok_or("stream without packet context")?;
        let mut event_context = Vec::new();
        if let Some(t) = &s.event_context {
            compile(t, &mut event_context, "")?;
        }
        by_class.insert(id, layouts.len());
        layouts.push(Layout {
            header,
            packet_context,
            event_context,
            classes: Vec::new(),
        });
    }
    for (&(stream, id), (name, fields)) in &meta.events {
        let kind = Kind::from_event_name(name.as_bytes());
        let mut ops = Vec::new();
        compile(fields, &mut ops, "")?;
        let layout = by_class
            .get(&stream)
            .ok_or("event of an unknown stream class")?;
        let classes = &mut layouts[*layout].classes;
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < 1 << 20)
            .ok_or("event id too large")?;
        if classes.len() <= id {
            classes.resize_with(id + 1, || None);
        }
        classes[id] = Some(Class { kind, ops });
    }
    Ok(TraceInfo {
        meta,
        host: crate::ffi::bt2::intern_host(&crate::ffi::bt2::hostname_in(&data)),
        layouts,
        by_class,
    })
}

/// Reads the traces under `root` in time order, as `bt2::read` does;
/// `Ok(Some(why))` (before any message) when they hold anything this
/// reader does not understand.
pub fn read(
    root: &Path,
    callback: &mut dyn FnMut(Message<'_>) -> Result<(), String>,
) -> Result<Option<String>, String> {
    let mut dirs = Vec::new();
    crate::ffi::bt2::find_traces(root, &mut dirs, 0);
    if dirs.is_empty() {
        return Ok(Some("no metadata file".into()));
    }
    let mut traces = Vec::new();
    let mut streams: Vec<Stream> = Vec::new();
    for dir in &dirs {
        let info = match open_trace(dir) {
            Ok(info) => info,
            Err(why) => return Ok(Some(format!("{}: {why}", dir.display()))),
        };
        // Group the data files by stream (stream class and instance, from
        // their first packet), each stream's files in time order.
        let mut groups: HashMap<(u64, u64), Vec<(u64, PathBuf)>> = HashMap::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(Some(format!("cannot list {}", dir.display())));
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_file())
                || path.file_name().is_some_and(|n| n == "metadata")
            {
                continue;
            }
            let mut head = vec![0u8; 4096];
            let Ok(mut f) = File::open(&path) else {
                return Ok(Some(format!("cannot open {}", path.display())));
            };
            let Ok(got) = read_up_to(&mut f, &mut head) else {
                return Ok(Some(format!("cannot read {}", path.display())));
            };
            if got == 0 {
                continue; // an empty file: nothing was written to it
            }
            let mut values = HashMap::new();
            let mut at = 0;
            let ok = (|| -> Result<(), String> {
                if let Some(h) = &info.meta.packet_header {
                    read_struct(h, &head[..got], &mut at, &mut values)?;
                }
                let class = values.get("stream_id").copied().unwrap_or(0);
                read_struct(
                    &info.layout(class)?.packet_context,
                    &head[..got],
                    &mut at,
                    &mut values,
                )
            })();
            if ok.is_err() || values.get("magic").is_some_and(|&m| m != 0xC1FC_1FC1) {
                return Ok(Some(format!("{}: not a CTF packet", path.display())));
            }
            let key = (
                values.get("stream_id").copied().unwrap_or(0),
                values
                    .get("stream_instance_id")
                    .copied()
                    .unwrap_or(u64::MAX),
            );
            let begin = values.get("timestamp_begin").copied().unwrap_or(0);
            groups.entry(key).or_default().push((begin, path));
        }
        let mut keys: Vec<_> = groups.keys().copied().collect();
        keys.sort();
        for key in keys {
            let mut files = groups.remove(&key).unwrap_or_default();
            files.sort();
            let first = &files[0].1;
            let name = std::path::absolute(first).unwrap_or_else(|_| first.clone());
            let name = name.display().to_string();
            streams.push(Stream {
                trace: traces.len(),
                index: streams.len(),
                name,
                files: files.into_iter().map(|(_, p)| p).collect(),
                file: 0,
                reader: None,
                packet: Vec::new(),
                at: 0,
                end: 0,
                layout: 0,
                cut: false,
                clock: 0,
                discarded: 0,
                last_end: None,
                pending: None,
                next: None,
            });
        }
        traces.push(info);
    }
    // Decode each stream's first event before handing anything over: a
    // trace this reader cannot decode goes to babeltrace2 whole.
    for s in &mut streams {
        if let Err(why) = s.advance(&traces[s.trace]) {
            return Ok(Some(format!("{}: {why}", s.name)));
        }
    }
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> = streams
        .iter()
        .filter_map(|s| s.next.as_ref().map(|d| Reverse((d.ns, s.index))))
        .collect();
    while let Some(Reverse((_, i))) = heap.pop() {
        let s = &mut streams[i];
        if let Some(d) = s.pending.take() {
            callback(Message::Discarded(d))?;
        }
        let d = s.next.take().expect("a decoded event");
        let info = &traces[s.trace];
        let class = info.layouts[s.layout].classes[d.id]
            .as_ref()
            .expect("decoded above");
        let message = match class.kind {
            None => Message::Other,
            Some(kind) => {
                let p = &s.packet;
                Message::Event(Event {
                    kind,
                    host: info.host,
                    ns: d.ns,
                    vpid: d.vpid,
                    vtid: d.vtid,
                    procname: text(p, d.strs[S_PROCNAME]),
                    stream: s.index,
                    co_name: text(p, d.strs[S_NAME]),
                    co_qualname: text(p, d.strs[S_QUALNAME]),
                    module: text(p, d.strs[S_MODULE]),
                    co_filename: text(p, d.strs[S_FILENAME]),
                    line: d.line,
                    exc_type: text(p, d.strs[S_EXC]),
                    id: d.def_id,
                    base_ns: d.base.map_or(0, |b| ns(&info.meta, b)),
                    data: &p[d.data.0 as usize..(d.data.0 + d.data.1) as usize],
                    span: d.span,
                    ticks: d.ticks,
                })
            }
        };
        callback(message)?;
        s.advance(info).map_err(|e| format!("{}: {e}", s.name))?;
        if let Some(d) = &s.next {
            heap.push(Reverse((d.ns, i)));
        }
    }
    for s in &mut streams {
        if let Some(d) = s.pending.take() {
            callback(Message::Discarded(d))?;
        }
    }
    Ok(None)
}
