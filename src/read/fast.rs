//! The fast mode's batches (`record::fast` writes them; the format is
//! `crate::format`'s) unpacked into the events the readable mode would
//! have recorded, names resolved from the `python_fast:def` events.
//!
//! A batch is committed after its records were taken (up to `FLUSH_NS`
//! later, a little more for an idle thread), so the unpacked events wait in
//! a heap until the trace has moved `WINDOW` past them, and come out in
//! time order with the other threads' events.

use crate::format as fast;
use crate::read::event::{Event, Kind, Message};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The names of pyust's own threads start so (`pyust-flusher` commits the
/// batches of idle threads).
const PYUST_THREAD: &str = "pyust-";

/// How long unpacked events wait for the batches of other threads.
const WINDOW: i64 = 400_000_000;

/// What unpacking found, for the report's notes.
#[derive(Default, Clone, Copy)]
pub struct Stats {
    pub batches: u64,
    pub events: u64,
    /// Events whose id had no definition in the trace (the recording
    /// started while the program ran: resolved after one epoch).
    pub unresolved: u64,
    /// Events that came after later ones of other threads were handed
    /// over (their batch was committed more than `WINDOW` late).
    pub late: u64,
    /// Batches whose records did not parse (cut short).
    pub bad: u64,
    /// Events of processes whose readable events the trace also holds
    /// (a session enabling every event records both): left out.
    pub duplicate: u64,
}

#[derive(Default)]
struct Names {
    co_name: String,
    co_qualname: String,
    module: String,
    co_filename: String,
    line: i64,
}

/// One unpacked event, waiting for its turn.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    ns: i64,
    /// Order of unpacking: ties keep a thread's order.
    seq: u64,
    host: u32,
    vpid: i64,
    vtid: i64,
    kind: u8,
    id: u32,
    line: i32,
    exc_id: u32,
    stream: usize,
    procname: u32,
}

pub(super) struct Decoder {
    /// By (host, pid, id).
    defs: HashMap<(u32, i64, u32), Names>,
    procnames: Vec<String>,
    procname_index: HashMap<String, u32>,
    /// The name of each thread (host, pid, tid), and of each process (tid
    /// -1), as their own events gave it: a batch committed by pyust's
    /// flusher thread carries the flusher's name (`pyust-flusher`), not
    /// that of the thread whose records it holds.
    names_seen: HashMap<(u32, i64, i64), u32>,
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    /// Everything up to here was handed over.
    released: i64,
    pub(super) stats: Stats,
    /// Processes with readable `python:*` events in the trace.
    readable: std::collections::HashSet<(u32, i64)>,
}

static UNKNOWN: Names = Names {
    co_name: String::new(),
    co_qualname: String::new(),
    module: String::new(),
    co_filename: String::new(),
    line: 0,
};

impl Decoder {
    pub(super) fn new() -> Decoder {
        Decoder {
            defs: HashMap::new(),
            procnames: Vec::new(),
            procname_index: HashMap::new(),
            names_seen: HashMap::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            released: i64::MIN,
            stats: Stats::default(),
            readable: std::collections::HashSet::new(),
        }
    }

    pub(super) fn message(
        &mut self,
        message: Message<'_>,
        out: &mut dyn FnMut(Message<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        let Message::Event(ev) = message else {
            return out(message);
        };
        match ev.kind {
            Kind::Def => {
                // Written by the thread that first ran the code: a thread
                // of the program.
                let name = self.intern(ev.procname);
                if !ev.procname.starts_with(PYUST_THREAD) {
                    self.names_seen.insert((ev.host, ev.vpid, -1), name);
                }
                let id = ev.id as u32;
                self.defs.insert(
                    (ev.host, ev.vpid, id),
                    Names {
                        co_name: ev.co_name.to_owned(),
                        co_qualname: ev.co_qualname.to_owned(),
                        module: ev.module.to_owned(),
                        co_filename: ev.co_filename.to_owned(),
                        line: ev.line,
                    },
                );
                Ok(())
            }
            Kind::Batch => {
                self.unpack(&ev);
                self.release(ev.ns - WINDOW, out)
            }
            _ if self.heap.is_empty() => {
                self.readable.insert((ev.host, ev.vpid));
                out(Message::Event(ev))
            }
            _ => {
                self.readable.insert((ev.host, ev.vpid));
                self.release(ev.ns, out)?;
                out(Message::Event(ev))
            }
        }
    }

    fn intern(&mut self, procname: &str) -> u32 {
        match self.procname_index.get(procname) {
            Some(&i) => i,
            None => {
                let i = self.procnames.len() as u32;
                self.procnames.push(procname.to_owned());
                self.procname_index.insert(procname.to_owned(), i);
                i
            }
        }
    }

    fn unpack(&mut self, ev: &Event<'_>) {
        self.stats.batches += 1;
        let mut procname = self.intern(ev.procname);
        if !ev.procname.starts_with(PYUST_THREAD) {
            self.names_seen
                .insert((ev.host, ev.vpid, ev.vtid), procname);
            self.names_seen.insert((ev.host, ev.vpid, -1), procname);
        } else if let Some(&name) = self
            .names_seen
            .get(&(ev.host, ev.vpid, ev.vtid))
            .or_else(|| self.names_seen.get(&(ev.host, ev.vpid, -1)))
        {
            procname = name;
        }
        let word = |at: usize| -> Option<u32> {
            let b = ev.data.get(at..at + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        // Ticks to ns: the batch's own ratio (1 where ticks are ns).
        let (span, ticks) = (ev.span.max(0) as u128, ev.ticks.max(0) as u128);
        let to_ns = |offset: u32| -> i64 {
            if ticks == 0 || span == ticks {
                i64::from(offset)
            } else {
                (u128::from(offset) * span / ticks) as i64
            }
        };
        let mut at = 0;
        while at < ev.data.len() {
            let (Some(delta), Some(w)) = (word(at), word(at + 4)) else {
                self.stats.bad += 1;
                return;
            };
            let kind = (w >> fast::KIND_SHIFT) as u8;
            let mut p = Pending {
                ns: ev.base_ns + to_ns(delta),
                seq: self.seq,
                host: ev.host,
                vpid: ev.vpid,
                vtid: ev.vtid,
                kind,
                id: w & ((1 << fast::KIND_SHIFT) - 1),
                line: 0,
                exc_id: 0,
                stream: ev.stream,
                procname,
            };
            at += 8;
            if u32::from(kind) == fast::EXCEPTION {
                let (Some(line), Some(exc)) = (word(at), word(at + 4)) else {
                    self.stats.bad += 1;
                    return;
                };
                p.line = line as i32;
                p.exc_id = exc;
                at += 8;
            } else if u32::from(kind) > fast::EXCEPTION {
                self.stats.bad += 1;
                return;
            }
            self.seq += 1;
            self.stats.events += 1;
            self.heap.push(Reverse(p));
        }
    }

    /// Hands over the unpacked events up to `upto` (all with `i64::MAX`).
    pub(super) fn release(
        &mut self,
        upto: i64,
        out: &mut dyn FnMut(Message<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        while self.heap.peek().is_some_and(|Reverse(p)| p.ns <= upto) {
            let Reverse(p) = self.heap.pop().expect("peeked");
            if p.ns < self.released {
                self.stats.late += 1;
            }
            self.released = self.released.max(p.ns);
            if self.readable.contains(&(p.host, p.vpid)) {
                self.stats.duplicate += 1;
                continue;
            }
            let kind = match u32::from(p.kind) {
                fast::CALL => Kind::Call,
                fast::RETURN => Kind::Return,
                fast::C_CALL => Kind::CCall,
                fast::C_RETURN => Kind::CReturn,
                _ => Kind::Exception,
            };
            let lookup = |id: u32, stats: &mut Stats| -> &Names {
                match self.defs.get(&(p.host, p.vpid, id)) {
                    Some(n) => n,
                    None => {
                        if id != 0 {
                            stats.unresolved += 1;
                        }
                        &UNKNOWN
                    }
                }
            };
            let mut stats = self.stats;
            let needs_name = matches!(kind, Kind::Call | Kind::CCall | Kind::Exception);
            let names = if needs_name {
                lookup(p.id, &mut stats)
            } else {
                &UNKNOWN
            };
            let exc = if kind == Kind::Exception {
                lookup(p.exc_id, &mut stats).co_name.as_str()
            } else {
                ""
            };
            let unnamed = needs_name && std::ptr::eq(names, &UNKNOWN);
            let q = if unnamed { "?" } else { &names.co_qualname };
            let ev = Event {
                kind,
                host: p.host,
                ns: p.ns,
                vpid: p.vpid,
                vtid: p.vtid,
                procname: &self.procnames[p.procname as usize],
                stream: p.stream,
                co_name: if unnamed && kind != Kind::Exception {
                    "?"
                } else {
                    &names.co_name
                },
                co_qualname: q,
                module: &names.module,
                co_filename: &names.co_filename,
                line: if kind == Kind::Exception {
                    i64::from(p.line)
                } else {
                    names.line
                },
                exc_type: if kind == Kind::Exception && exc.is_empty() {
                    "?"
                } else {
                    exc
                },
                id: 0,
                base_ns: 0,
                data: &[],
                span: 0,
                ticks: 0,
            };
            out(Message::Event(ev))?;
            self.stats = stats;
        }
        Ok(())
    }
}
