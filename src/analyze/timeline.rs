//! `pyust report`'s timelines: Perfetto's own protobuf trace format
//! (`--perfetto`) and the Chrome trace-event JSON (`--perfetto-json`),
//! both written as the events stream by, and the limits that keep them
//! loadable (`--min-duration`, `--from`/`--to`, `--max-slices`).
//!
//! A frame's slice is written once it is known to be kept: when it has
//! lasted `--min-duration` (or at its return) inside the time window and
//! under the slice budget; its ancestors are kept before it. Memory stays
//! bounded by the stack depths: nothing waits longer than the minimum
//! duration, and on each thread the slices come out in time order.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The bounds of the timeline, in the trace's nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub min_duration: i64,
    pub from: i64,
    pub to: i64,
    pub max_slices: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_duration: 0,
            from: i64::MIN,
            to: i64::MAX,
            max_slices: u64::MAX,
        }
    }
}

/// What one slice is about: the function's name, and for Python code its
/// file and line. `id` is the report's function number (interning).
pub struct Slice<'a> {
    pub id: u32,
    pub label: &'a str,
    pub file: &'a str,
    pub line: i64,
    pub c: bool,
}

/// A thread's track: `key` numbers it for the writers.
pub struct Track<'a> {
    pub key: u32,
    pub pid: i64,
    pub tid: i64,
    pub incarnation: u32,
    pub procname: &'a str,
}

/// What the limits left out.
#[derive(Default, Debug)]
pub struct Dropped {
    pub slices: u64,
    pub instants: u64,
    pub short: u64,
    pub outside: u64,
    pub over_budget: u64,
}

impl Dropped {
    /// One line for the report: what was written and what left out.
    pub fn summary(&self, limits: &Limits) -> String {
        let mut line = format!(
            "timeline: {} slice(s) and {} exception(s) written",
            self.slices, self.instants
        );
        if self.short > 0 {
            line += &format!(
                "; {} slice(s) shorter than --min-duration {} left out",
                self.short,
                duration(limits.min_duration)
            );
        }
        if self.outside > 0 {
            line += &format!("; {} outside --from/--to left out", self.outside);
        }
        if self.over_budget > 0 {
            line += &format!(
                "; {} past --max-slices {} left out",
                self.over_budget, limits.max_slices
            );
        }
        line
    }
}

/// A duration as people write it: 1.5ms, 20us, 2s.
fn duration(ns: i64) -> String {
    if ns >= 1_000_000_000 {
        format!("{}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{}ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{}us", ns as f64 / 1e3)
    } else {
        format!("{ns}ns")
    }
}

/// The timeline files being written, behind the limits.
pub struct Timeline {
    pub limits: Limits,
    /// Relative times (JSON) count from here: the first event.
    pub t0: i64,
    json: Option<Json>,
    proto: Option<Proto>,
    pub dropped: Dropped,
}

impl Timeline {
    pub fn create(
        proto: Option<&Path>,
        json: Option<&Path>,
        limits: Limits,
    ) -> Result<Option<Timeline>, String> {
        if proto.is_none() && json.is_none() {
            return Ok(None);
        }
        Ok(Some(Timeline {
            limits,
            t0: 0,
            json: json.map(Json::create).transpose()?,
            proto: proto.map(Proto::create).transpose()?,
            dropped: Dropped::default(),
        }))
    }

    pub fn thread(&mut self, t: &Track<'_>, ns: i64) -> Result<(), String> {
        if let Some(j) = &mut self.json {
            j.thread(t)?;
        }
        if let Some(p) = &mut self.proto {
            p.thread(t, ns)?;
        }
        Ok(())
    }

    /// Whether a frame that started at `start` is known, at `now`, to be
    /// kept (then counted as written).
    pub fn keep(&mut self, start: i64, now: i64) -> bool {
        let l = &self.limits;
        if now - start >= l.min_duration
            && now >= l.from
            && start < l.to
            && self.dropped.slices < l.max_slices
        {
            self.dropped.slices += 1;
            return true;
        }
        false
    }

    /// A frame that was never kept, closed at `end`: why it was left out.
    pub fn left_out(&mut self, start: i64, end: i64) {
        let l = &self.limits;
        if end < l.from || start >= l.to {
            self.dropped.outside += 1;
        } else if end - start < l.min_duration {
            self.dropped.short += 1;
        } else {
            self.dropped.over_budget += 1;
        }
    }

    pub fn begin(
        &mut self,
        track: u32,
        pid: i64,
        tid: i64,
        start: i64,
        s: &Slice<'_>,
    ) -> Result<(), String> {
        let ns = start.max(self.limits.from);
        if let Some(j) = &mut self.json {
            j.begin(pid, tid, ns - self.t0, s)?;
        }
        if let Some(p) = &mut self.proto {
            p.begin(track, ns, s)?;
        }
        Ok(())
    }

    pub fn end(&mut self, track: u32, pid: i64, tid: i64, end: i64) -> Result<(), String> {
        let ns = end.min(self.limits.to);
        if let Some(j) = &mut self.json {
            j.end(pid, tid, ns - self.t0)?;
        }
        if let Some(p) = &mut self.proto {
            p.end(track, ns)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn instant(
        &mut self,
        track: u32,
        pid: i64,
        tid: i64,
        ns: i64,
        exc_type: &str,
        qualname: &str,
        line: i64,
    ) -> Result<(), String> {
        let l = &self.limits;
        if ns < l.from || ns > l.to || self.dropped.slices >= l.max_slices {
            return Ok(());
        }
        self.dropped.instants += 1;
        if let Some(j) = &mut self.json {
            j.instant(pid, tid, ns - self.t0, exc_type, qualname, line)?;
        }
        if let Some(p) = &mut self.proto {
            p.instant(track, ns, exc_type, qualname, line)?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<(), String> {
        if let Some(j) = self.json {
            j.finish()?;
        }
        if let Some(p) = self.proto {
            p.finish()?;
        }
        Ok(())
    }
}

fn create(path: &Path) -> Result<BufWriter<File>, String> {
    File::create(path)
        .map(|f| BufWriter::with_capacity(1 << 20, f))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn write_error(path: &Path, e: std::io::Error) -> String {
    format!("cannot write {}: {e}", path.display())
}

// --------------------------------------------------------------------------
// Chrome trace-event JSON

/// B/E pairs per frame, instant events for exceptions, process and
/// thread names as metadata (the viewers show them with the pid and tid:
/// "python 1234"). Times in microseconds from the first event.
struct Json {
    path: PathBuf,
    out: BufWriter<File>,
    first: bool,
    seen_pids: std::collections::HashSet<i64>,
}

impl Json {
    fn create(path: &Path) -> Result<Json, String> {
        let mut out = create(path)?;
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")
            .map_err(|e| write_error(path, e))?;
        Ok(Json {
            path: path.to_path_buf(),
            out,
            first: true,
            seen_pids: Default::default(),
        })
    }

    fn record(&mut self, json: std::fmt::Arguments<'_>) -> Result<(), String> {
        let sep: &[u8] = if self.first { b"" } else { b",\n" };
        self.first = false;
        self.out
            .write_all(sep)
            .and_then(|()| self.out.write_fmt(json))
            .map_err(|e| write_error(&self.path, e))
    }

    fn thread(&mut self, t: &Track<'_>) -> Result<(), String> {
        if self.seen_pids.insert(t.pid) {
            self.record(format_args!(
                "{{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":{}}}}}",
                t.pid,
                t.tid,
                JsonStr(t.procname)
            ))?;
        }
        self.record(format_args!(
            "{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":{}}}}}",
            t.pid,
            t.tid,
            JsonStr(&thread_name(t))
        ))
    }

    fn begin(&mut self, pid: i64, tid: i64, rel: i64, s: &Slice<'_>) -> Result<(), String> {
        if s.c {
            self.record(format_args!(
                "{{\"ph\":\"B\",\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"cat\":\"c\",\"name\":{}}}",
                Micros(rel),
                JsonStr(s.label)
            ))
        } else {
            self.record(format_args!(
                "{{\"ph\":\"B\",\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"cat\":\"python\",\"name\":{},\"args\":{{\"file\":{},\"line\":{}}}}}",
                Micros(rel),
                JsonStr(s.label),
                JsonStr(s.file),
                s.line
            ))
        }
    }

    fn end(&mut self, pid: i64, tid: i64, rel: i64) -> Result<(), String> {
        self.record(format_args!(
            "{{\"ph\":\"E\",\"pid\":{pid},\"tid\":{tid},\"ts\":{}}}",
            Micros(rel)
        ))
    }

    fn instant(
        &mut self,
        pid: i64,
        tid: i64,
        rel: i64,
        exc_type: &str,
        qualname: &str,
        line: i64,
    ) -> Result<(), String> {
        self.record(format_args!(
            "{{\"ph\":\"i\",\"s\":\"t\",\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"cat\":\"exception\",\"name\":{},\"args\":{{\"in\":{},\"line\":{line}}}}}",
            Micros(rel),
            JsonStr(exc_type),
            JsonStr(qualname),
        ))
    }

    fn finish(mut self) -> Result<(), String> {
        self.out
            .write_all(b"\n]}\n")
            .and_then(|()| self.out.flush())
            .map_err(|e| write_error(&self.path, e))
    }
}

fn thread_name(t: &Track<'_>) -> String {
    if t.pid == t.tid {
        t.procname.to_owned()
    } else {
        format!("{} thread", t.procname)
    }
}

/// Microseconds with nanosecond precision, as the trace-event format wants.
struct Micros(i64);

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let n = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:03}", n / 1000, n % 1000)
    }
}

/// A JSON string literal.
struct JsonStr<'a>(&'a str);

impl std::fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        f.write_char('"')?;
        for ch in self.0.chars() {
            match ch {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

// --------------------------------------------------------------------------
// Perfetto protobuf (perfetto/trace/trace_packet.proto, track_event/*.proto)

/// Field numbers of the messages written (Perfetto's protos).
mod field {
    pub const TRACE_PACKET: u32 = 1; // Trace.packet
    pub const TIMESTAMP: u32 = 8;
    pub const SEQUENCE_ID: u32 = 10; // trusted_packet_sequence_id
    pub const TRACK_EVENT: u32 = 11;
    pub const INTERNED_DATA: u32 = 12;
    pub const SEQUENCE_FLAGS: u32 = 13;
    pub const CLOCK_SNAPSHOT: u32 = 6;
    pub const TIMESTAMP_CLOCK_ID: u32 = 58; // also TracePacketDefaults'
                                            // ClockSnapshot.clocks, and its Clock
    pub const CLOCKS: u32 = 1;
    pub const CLOCK_ID: u32 = 1;
    pub const CLOCK_TIMESTAMP: u32 = 2;
    pub const CLOCK_INCREMENTAL: u32 = 3;
    pub const PACKET_DEFAULTS: u32 = 59; // trace_packet_defaults
    pub const TRACK_DESCRIPTOR: u32 = 60;
    // TracePacketDefaults.track_event_defaults, TrackEventDefaults.track_uuid
    pub const TRACK_EVENT_DEFAULTS: u32 = 11;
    pub const DEFAULT_TRACK_UUID: u32 = 11;
    // TrackDescriptor
    pub const UUID: u32 = 1;
    pub const PROCESS: u32 = 3;
    pub const THREAD: u32 = 4;
    // ProcessDescriptor / ThreadDescriptor
    pub const PID: u32 = 1;
    pub const TID: u32 = 2;
    pub const PROCESS_NAME: u32 = 6;
    pub const THREAD_NAME: u32 = 5;
    // TrackEvent
    pub const CATEGORY_IIDS: u32 = 3;
    pub const DEBUG_ANNOTATIONS: u32 = 4;
    pub const TYPE: u32 = 9;
    pub const NAME_IID: u32 = 10;
    pub const SOURCE_LOCATION_IID: u32 = 34;
    // DebugAnnotation
    pub const ANNOTATION_INT: u32 = 4;
    pub const ANNOTATION_STRING: u32 = 6;
    pub const ANNOTATION_NAME: u32 = 10;
    // InternedData and its entries (iid 1, name 2)
    pub const EVENT_CATEGORIES: u32 = 1;
    pub const EVENT_NAMES: u32 = 2;
    pub const SOURCE_LOCATIONS: u32 = 4;
    pub const IID: u32 = 1;
    pub const NAME: u32 = 2;
    // SourceLocation
    pub const FILE_NAME: u32 = 2;
    pub const FUNCTION_NAME: u32 = 3;
    pub const LINE_NUMBER: u32 = 4;
}

const SLICE_BEGIN: u64 = 1;
const SLICE_END: u64 = 2;
const INSTANT: u64 = 3;
const SEQ_INCREMENTAL_STATE_CLEARED: u64 = 1;
/// The trace's clock (Perfetto's default: boot time; here LTTng's clock).
const CLOCK_TRACE: u64 = 6;
/// A clock of the sequence's own whose timestamps are deltas from the
/// previous packet's (ids 64 and up are per sequence).
const CLOCK_DELTA: u64 = 64;
const CATEGORIES: [&str; 3] = ["python", "c", "exception"];
/// Exception names are interned above the functions' ids.
const EXC_IIDS: u64 = 1 << 32;

/// A protobuf message being built: fields appended in order.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push(n as u8 | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    fn uint(&mut self, field: u32, n: u64) {
        self.key(field, 0);
        self.varint(n);
    }
    fn int(&mut self, field: u32, n: i64) {
        self.uint(field, n as u64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn msg(&mut self, field: u32, m: &Msg) {
        self.bytes(field, &m.0);
    }
}

/// One thread's packet sequence: its track and what it has interned.
struct Sequence {
    id: u32,
    /// The time of its last packet on the delta clock.
    last: i64,
    names: std::collections::HashSet<u64>,
}

/// The protobuf trace: one packet sequence per thread (the shape
/// Perfetto's own SDK writes), its track as the sequence's default
/// track, function names, categories and source locations interned per
/// sequence, timestamps as deltas from the sequence's previous packet
/// (each thread's slices come in time order), exceptions at absolute
/// times on LTTng's clock.
struct Proto {
    path: PathBuf,
    out: BufWriter<File>,
    sequences: Vec<Sequence>,
    processes: std::collections::HashSet<(i64, u32)>,
    exceptions: HashMap<String, u64>,
    /// Reused for each event and its packet (no allocation per event).
    ev: Msg,
    pk: Msg,
}

impl Proto {
    fn create(path: &Path) -> Result<Proto, String> {
        Ok(Proto {
            path: path.to_path_buf(),
            out: create(path)?,
            sequences: Vec::new(),
            processes: Default::default(),
            exceptions: HashMap::new(),
            ev: Msg::default(),
            pk: Msg::default(),
        })
    }

    fn packet(&mut self, p: &Msg) -> Result<(), String> {
        // Trace.packet's key, then the length as a varint.
        let mut head = [0u8; 11];
        head[0] = (field::TRACE_PACKET << 3 | 2) as u8;
        let (mut n, mut len) = (p.0.len() as u64, 1);
        while n >= 0x80 {
            head[len] = n as u8 | 0x80;
            n >>= 7;
            len += 1;
        }
        head[len] = n as u8;
        self.out
            .write_all(&head[..len + 1])
            .and_then(|()| self.out.write_all(&p.0))
            .map_err(|e| write_error(&self.path, e))
    }

    fn thread(&mut self, t: &Track<'_>, ns: i64) -> Result<(), String> {
        let id = t.key + 1;
        let uuid = 0x7079_0000_0000_0000 | u64::from(id);
        let first = self.processes.insert((t.pid, t.incarnation));
        while self.sequences.len() <= t.key as usize {
            self.sequences.push(Sequence {
                id: 0,
                last: 0,
                names: Default::default(),
            });
        }
        self.sequences[t.key as usize] = Sequence {
            id,
            last: ns,
            names: Default::default(),
        };
        // The sequence's state: its clock, categories, default track.
        let mut p = Msg::default();
        p.uint(field::TIMESTAMP, ns as u64);
        p.uint(field::TIMESTAMP_CLOCK_ID, CLOCK_TRACE);
        p.uint(field::SEQUENCE_ID, id.into());
        p.uint(field::SEQUENCE_FLAGS, SEQ_INCREMENTAL_STATE_CLEARED);
        // The delta clock starts at `ns`.
        let mut snapshot = Msg::default();
        for (clock, incremental) in [(CLOCK_TRACE, false), (CLOCK_DELTA, true)] {
            let mut c = Msg::default();
            c.uint(field::CLOCK_ID, clock);
            c.uint(field::CLOCK_TIMESTAMP, ns as u64);
            if incremental {
                c.uint(field::CLOCK_INCREMENTAL, 1);
            }
            snapshot.msg(field::CLOCKS, &c);
        }
        p.msg(field::CLOCK_SNAPSHOT, &snapshot);
        let mut interned = Msg::default();
        for (i, name) in CATEGORIES.iter().enumerate() {
            let mut c = Msg::default();
            c.uint(field::IID, i as u64 + 1);
            c.str(field::NAME, name);
            interned.msg(field::EVENT_CATEGORIES, &c);
        }
        p.msg(field::INTERNED_DATA, &interned);
        let mut defaults = Msg::default();
        defaults.uint(field::TIMESTAMP_CLOCK_ID, CLOCK_DELTA);
        let mut track_defaults = Msg::default();
        track_defaults.uint(field::DEFAULT_TRACK_UUID, uuid);
        defaults.msg(field::TRACK_EVENT_DEFAULTS, &track_defaults);
        p.msg(field::PACKET_DEFAULTS, &defaults);
        self.packet(&p)?;
        // Then the tracks: one descriptor per packet (the packet's payload
        // is a oneof).
        if first {
            let mut process = Msg::default();
            process.int(field::PID, t.pid);
            process.str(field::PROCESS_NAME, t.procname);
            let mut track = Msg::default();
            track.uint(field::UUID, uuid ^ 0x0100_0000_0000_0000);
            track.msg(field::PROCESS, &process);
            let mut p = Msg::default();
            p.uint(field::TIMESTAMP, 0);
            p.uint(field::SEQUENCE_ID, id.into());
            p.msg(field::TRACK_DESCRIPTOR, &track);
            self.packet(&p)?;
        }
        let mut thread = Msg::default();
        thread.int(field::PID, t.pid);
        thread.int(field::TID, t.tid);
        thread.str(field::THREAD_NAME, &thread_name(t));
        let mut track = Msg::default();
        track.uint(field::UUID, uuid);
        track.msg(field::THREAD, &thread);
        let mut p = Msg::default();
        p.uint(field::TIMESTAMP, 0);
        p.uint(field::SEQUENCE_ID, id.into());
        p.msg(field::TRACK_DESCRIPTOR, &track);
        self.packet(&p)
    }

    /// A packet of `track`'s sequence at `ns` carrying `event`, with the
    /// interned data it needs for the first time.
    /// On the delta clock unless `absolute` (or time went back).
    fn event(
        &mut self,
        track: u32,
        ns: i64,
        event: &Msg,
        interned: Option<&Msg>,
        absolute: bool,
    ) -> Result<(), String> {
        let seq = &mut self.sequences[track as usize];
        let mut p = std::mem::take(&mut self.pk);
        p.0.clear();
        if absolute || ns < seq.last {
            p.uint(field::TIMESTAMP, ns as u64);
            p.uint(field::TIMESTAMP_CLOCK_ID, CLOCK_TRACE);
        } else {
            p.uint(field::TIMESTAMP, (ns - seq.last) as u64);
            seq.last = ns;
        }
        p.uint(field::SEQUENCE_ID, seq.id.into());
        if let Some(i) = interned {
            p.msg(field::INTERNED_DATA, i);
        }
        p.msg(field::TRACK_EVENT, event);
        let done = self.packet(&p);
        self.pk = p;
        done
    }

    fn begin(&mut self, track: u32, ns: i64, s: &Slice<'_>) -> Result<(), String> {
        let iid = u64::from(s.id) + 1;
        let interned = if self.sequences[track as usize].names.insert(iid) {
            let mut i = Msg::default();
            let mut name = Msg::default();
            name.uint(field::IID, iid);
            name.str(field::NAME, s.label);
            i.msg(field::EVENT_NAMES, &name);
            if !s.c {
                let mut loc = Msg::default();
                loc.uint(field::IID, iid);
                loc.str(field::FILE_NAME, s.file);
                loc.str(field::FUNCTION_NAME, s.label);
                loc.int(field::LINE_NUMBER, s.line);
                i.msg(field::SOURCE_LOCATIONS, &loc);
            }
            Some(i)
        } else {
            None
        };
        let mut e = std::mem::take(&mut self.ev);
        e.0.clear();
        e.uint(field::TYPE, SLICE_BEGIN);
        e.uint(field::NAME_IID, iid);
        e.uint(field::CATEGORY_IIDS, if s.c { 2 } else { 1 });
        if !s.c {
            e.uint(field::SOURCE_LOCATION_IID, iid);
        }
        let done = self.event(track, ns, &e, interned.as_ref(), false);
        self.ev = e;
        done
    }

    fn end(&mut self, track: u32, ns: i64) -> Result<(), String> {
        let mut e = std::mem::take(&mut self.ev);
        e.0.clear();
        e.uint(field::TYPE, SLICE_END);
        let done = self.event(track, ns, &e, None, false);
        self.ev = e;
        done
    }

    fn instant(
        &mut self,
        track: u32,
        ns: i64,
        exc_type: &str,
        qualname: &str,
        line: i64,
    ) -> Result<(), String> {
        let next = EXC_IIDS + self.exceptions.len() as u64;
        let iid = *self.exceptions.entry(exc_type.to_owned()).or_insert(next);
        let interned = if self.sequences[track as usize].names.insert(iid) {
            let mut i = Msg::default();
            let mut name = Msg::default();
            name.uint(field::IID, iid);
            name.str(field::NAME, exc_type);
            i.msg(field::EVENT_NAMES, &name);
            Some(i)
        } else {
            None
        };
        let mut e = Msg::default();
        e.uint(field::TYPE, INSTANT);
        e.uint(field::NAME_IID, iid);
        e.uint(field::CATEGORY_IIDS, 3);
        for (name, value) in [("in", Err(qualname)), ("line", Ok(line))] {
            let mut a = Msg::default();
            a.str(field::ANNOTATION_NAME, name);
            match value {
                Ok(n) => a.int(field::ANNOTATION_INT, n),
                Err(s) => a.str(field::ANNOTATION_STRING, s),
            }
            e.msg(field::DEBUG_ANNOTATIONS, &a);
        }
        // Absolute: with --min-duration, a slice begun before it may
        // still be written after it.
        self.event(track, ns, &e, interned.as_ref(), true)
    }

    fn finish(mut self) -> Result<(), String> {
        self.out.flush().map_err(|e| write_error(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(
            JsonStr("a\"b\\c\n\u{1}é").to_string(),
            "\"a\\\"b\\\\c\\n\\u0001é\""
        );
    }

    #[test]
    fn micros_keep_nanoseconds() {
        assert_eq!(Micros(1_234_567).to_string(), "1234.567");
        assert_eq!(Micros(5).to_string(), "0.005");
        assert_eq!(Micros(-1500).to_string(), "-1.500");
    }

    #[test]
    fn varints_and_fields() {
        let mut m = Msg::default();
        m.uint(1, 150);
        m.str(2, "hi");
        assert_eq!(m.0, [0x08, 0x96, 0x01, 0x12, 2, b'h', b'i']);
        let mut m = Msg::default();
        m.int(4, -1);
        assert_eq!(m.0.len(), 11);
    }
}
