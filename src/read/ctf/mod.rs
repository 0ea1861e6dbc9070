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
//!
//! `metadata` parses the TSDL; `layout` compiles its types into read
//! operations; this file reads the streams packet by packet.

mod layout;
mod metadata;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use layout::*;
use metadata::{metadata_text, tokens, Metadata, Parser};

use crate::read::event::{Discarded, Event, Kind, Message};
use crate::read::traces::{find_traces, hostname_in, intern_host};

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

    /// A packet's header and context fields (from its first bytes, `head`);
    /// the offset where its events start.
    fn packet_fields(&self, head: &[u8]) -> Result<(HashMap<String, u64>, usize), String> {
        let mut values = HashMap::new();
        let mut at = 0;
        if let Some(h) = &self.meta.packet_header {
            read_struct(h, head, &mut at, &mut values)?;
        }
        let class = values.get("stream_id").copied().unwrap_or(0);
        read_struct(
            &self.layout(class)?.packet_context,
            head,
            &mut at,
            &mut values,
        )?;
        Ok((values, at))
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
            // What the file holds from this packet on: no size read from
            // the trace asks for more (a corrupt packet_size of 2^63 would
            // be an allocation that aborts).
            let start = reader.stream_position().map_err(|e| e.to_string())? - got as u64;
            let left = reader
                .get_ref()
                .metadata()
                .map_err(|e| e.to_string())?
                .len()
                .saturating_sub(start);
            let (values, at) = info.packet_fields(&head)?;
            let class = values.get("stream_id").copied().unwrap_or(0);
            let size = values
                .get("packet_size")
                .copied()
                .ok_or("packet without a size")?
                / 8;
            let content = values.get("content_size").copied().unwrap_or(size * 8) / 8;
            if content > size || content < at as u64 {
                return Err("packet sizes do not add up".into());
            }
            // Past the end of the file, a packet is cut short (the disk
            // filled, a crash): its whole events only.
            let (size, content) = (size.min(left) as usize, content.min(left) as usize);
            if size == 0 {
                return Err("a packet of size 0".into());
            }
            if size < got {
                // A small packet: give back what belongs to the next one.
                reader
                    .seek(SeekFrom::Current(size as i64 - got as i64))
                    .map_err(|e| e.to_string())?;
                head.truncate(size);
            }
            self.packet.clear();
            self.packet.extend_from_slice(&head);
            if size > self.packet.len() {
                let have = self.packet.len();
                self.packet.resize(size, 0);
                let got = read_up_to(reader, &mut self.packet[have..])?;
                self.packet.truncate(have + got);
            }
            self.cut = (content as u64) < values.get("content_size").map_or(0, |c| c / 8)
                || content > self.packet.len();
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
        host: intern_host(&hostname_in(&data)),
        layouts,
        by_class,
    })
}

/// Whether the packets of the traces under `root` could be LTTng's: the
/// first whose sizes cannot be (none, content beyond the packet or within
/// its header, a magic number that is not CTF's), in one line. libbabeltrace2
/// asserts on some of these and aborts the process reading through it;
/// this is asked before it reads. Traces whose metadata this reader does
/// not parse are left to libbabeltrace2.
pub fn check(root: &Path) -> Result<(), String> {
    let mut dirs = Vec::new();
    find_traces(root, &mut dirs, 0);
    let mut head = vec![0u8; 4096];
    for dir in &dirs {
        let (Ok(info), Ok(entries)) = (open_trace(dir), std::fs::read_dir(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_file())
                || path.file_name().is_some_and(|n| n == "metadata")
            {
                continue;
            }
            let bad = |off: u64, why: &str| {
                Err(format!("{}: packet at byte {off}: {why}", path.display()))
            };
            let mut f =
                File::open(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let len = f.metadata().map_err(|e| e.to_string())?.len();
            let mut off = 0;
            while off < len {
                f.seek(SeekFrom::Start(off)).map_err(|e| e.to_string())?;
                let got = read_up_to(&mut f, &mut head)?;
                let (values, at) = match info.packet_fields(&head[..got]) {
                    Ok(fields) => fields,
                    Err(why) => return bad(off, &why),
                };
                if values.get("magic").is_some_and(|&m| m != 0xC1FC_1FC1) {
                    return bad(off, "not a CTF packet (its magic number)");
                }
                let Some(&size) = values.get("packet_size") else {
                    return bad(off, "no packet_size");
                };
                let content = values.get("content_size").copied().unwrap_or(size);
                if size == 0 || size % 8 != 0 || size >= 1 << 62 {
                    return bad(off, &format!("packet_size {size} bits"));
                }
                if content > size || content < 8 * at as u64 {
                    return bad(off, &format!("content_size {content} bits in a packet of {size} bits with {at} bytes of header"));
                }
                off += size / 8;
            }
        }
    }
    Ok(())
}

/// Reads the traces under `root` in time order, as `bt2::read` does;
/// `Ok(Some(why))` (before any message) when they hold anything this
/// reader does not understand.
pub fn read(
    root: &Path,
    callback: &mut dyn FnMut(Message<'_>) -> Result<(), String>,
) -> Result<Option<String>, String> {
    let mut dirs = Vec::new();
    find_traces(root, &mut dirs, 0);
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
            let values = match info.packet_fields(&head[..got]) {
                Ok((values, _)) if values.get("magic").is_none_or(|&m| m == 0xC1FC_1FC1) => values,
                _ => return Ok(Some(format!("{}: not a CTF packet", path.display()))),
            };
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
