//! Perfetto's own protobuf trace format (`--perfetto`).

use super::json::thread_name;
use super::*;
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

pub(super) const SLICE_BEGIN: u64 = 1;
pub(super) const SLICE_END: u64 = 2;
pub(super) const INSTANT: u64 = 3;
pub(super) const SEQ_INCREMENTAL_STATE_CLEARED: u64 = 1;
/// The trace's clock (Perfetto's default: boot time; here LTTng's clock).
pub(super) const CLOCK_TRACE: u64 = 6;
/// A clock of the sequence's own whose timestamps are deltas from the
/// previous packet's (ids 64 and up are per sequence).
pub(super) const CLOCK_DELTA: u64 = 64;
pub(super) const CATEGORIES: [&str; 3] = ["python", "c", "exception"];
/// Exception names are interned above the functions' ids.
pub(super) const EXC_IIDS: u64 = 1 << 32;

/// A protobuf message being built: fields appended in order.
#[derive(Default)]
pub(super) struct Msg(pub(super) Vec<u8>);

impl Msg {
    pub(super) fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push(n as u8 | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }
    pub(super) fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    pub(super) fn uint(&mut self, field: u32, n: u64) {
        self.key(field, 0);
        self.varint(n);
    }
    pub(super) fn int(&mut self, field: u32, n: i64) {
        self.uint(field, n as u64);
    }
    pub(super) fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    pub(super) fn str(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    pub(super) fn msg(&mut self, field: u32, m: &Msg) {
        self.bytes(field, &m.0);
    }
}

/// One thread's packet sequence: its track and what it has interned.
pub(super) struct Sequence {
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
pub(super) struct Proto {
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
    pub(super) fn create(path: &Path) -> Result<Proto, String> {
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

    pub(super) fn packet(&mut self, p: &Msg) -> Result<(), String> {
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

    pub(super) fn thread(&mut self, t: &Track<'_>, ns: i64) -> Result<(), String> {
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
    pub(super) fn event(
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

    pub(super) fn begin(&mut self, track: u32, ns: i64, s: &Slice<'_>) -> Result<(), String> {
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

    pub(super) fn end(&mut self, track: u32, ns: i64) -> Result<(), String> {
        let mut e = std::mem::take(&mut self.ev);
        e.0.clear();
        e.uint(field::TYPE, SLICE_END);
        let done = self.event(track, ns, &e, None, false);
        self.ev = e;
        done
    }

    pub(super) fn instant(
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

    pub(super) fn finish(mut self) -> Result<(), String> {
        self.out.flush().map_err(|e| write_error(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
