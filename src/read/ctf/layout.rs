//! The metadata's types compiled into flat lists of read operations (one
//! per field pyust reads or skips), and the decoding of an event's fields
//! with them into spans of the packet.

use std::collections::HashMap;

use super::metadata::Type;
use crate::read::event::Kind;

// --------------------------------------------------------------------------
// Layouts compiled for decoding

/// Where a field's value goes.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Slot {
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
pub(super) enum Op {
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

pub(super) fn slot(name: &str) -> Slot {
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
pub(super) fn compile(t: &Type, ops: &mut Vec<Op>, name: &str) -> Result<(), String> {
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
pub(super) enum Header {
    Compact,
    Large,
}

pub(super) fn header_kind(t: &Type) -> Result<Header, String> {
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

pub(super) fn le(b: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(word)
}

pub(super) struct Class {
    pub(super) kind: Option<Kind>,
    pub(super) ops: Vec<Op>,
}

/// How the packets and events of one stream class are laid out.
pub(super) struct Layout {
    pub(super) header: Header,
    pub(super) packet_context: Type,
    pub(super) event_context: Vec<Op>,
    /// By event id.
    pub(super) classes: Vec<Option<Class>>,
}

#[derive(Clone, Copy, Default)]
pub(super) struct Span(pub(super) u32, pub(super) u32);

pub(super) struct Decoded {
    pub(super) ns: i64,
    /// The event id (its class in the stream's layout).
    pub(super) id: usize,
    pub(super) strs: [Span; 6],
    pub(super) line: i64,
    pub(super) vpid: i64,
    pub(super) vtid: i64,
    pub(super) def_id: i64,
    /// A batch's base time (cycles) and records.
    pub(super) base: Option<u64>,
    pub(super) data: Span,
    pub(super) span: i64,
    pub(super) ticks: i64,
}

pub(super) const S_NAME: usize = 0;
pub(super) const S_QUALNAME: usize = 1;
pub(super) const S_MODULE: usize = 2;
pub(super) const S_FILENAME: usize = 3;
pub(super) const S_EXC: usize = 4;
pub(super) const S_PROCNAME: usize = 5;

pub(super) fn run(ops: &[Op], p: &[u8], at: &mut usize, d: &mut Decoded) -> Result<(), String> {
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

pub(super) fn put(d: &mut Decoded, slot: Slot, span: Span) {
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

pub(super) fn text(p: &[u8], s: Span) -> &str {
    let bytes = &p[s.0 as usize..(s.0 + s.1) as usize];
    std::str::from_utf8(bytes).unwrap_or("?")
}

// --------------------------------------------------------------------------
// Data streams

/// The values of a packet header and context read by name.
pub(super) fn read_struct(
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

pub(super) fn align_up(at: usize, align: usize) -> usize {
    if align <= 1 {
        at
    } else {
        at.div_ceil(align) * align
    }
}
