//! `pyust report`: from a trace folder to answers — a cProfile-like table
//! per function, folded stacks and a flame graph, and Perfetto timelines
//! (`super::timeline`).
//!
//! One pass over the trace in time order (`crate::read`): `events` moves
//! each thread's stack and charges time, `output` writes the table, folded
//! stacks and flame graph, `progress` shows how far it is. Memory is bounded by the threads' stack depths, the
//! number of distinct functions and of distinct call paths — never by the
//! number of events; the timeline is written as the events stream by.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::timeline::{Dropped, Limits, Slice, Timeline, Track};
use crate::fxhash::FxMap;
use crate::read::{Discarded, Event, Kind, Message};

mod events;
#[cfg(test)]
mod fuzz;
mod output;
mod progress;

use progress::Progress;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Tottime,
    Cumtime,
    Calls,
}

pub struct Options {
    pub sort: Sort,
    /// Rows of the table (0: all).
    pub limit: usize,
    pub pid: Option<i64>,
    pub tid: Option<i64>,
    /// Only this host's processes (a relay's folder holds several hosts).
    pub host: Option<String>,
    pub flamegraph: Option<PathBuf>,
    pub folded: Option<PathBuf>,
    /// The timeline in Perfetto's protobuf format, and as JSON.
    pub perfetto: Option<PathBuf>,
    pub perfetto_json: Option<PathBuf>,
    /// Bounds of the timelines; `from`/`to` count from the first event.
    pub limits: Limits,
}

/// One function: a Python code object (module, qualified name, file,
/// first line) or a C function (its qualified name).
struct Func {
    label: String,
    file: String,
    line: i64,
    calls: u64,
    /// Time in its own body, children excluded (ns).
    tottime: i64,
    /// Time from call to return, counted once per outermost call of a
    /// recursion (as cProfile does) (ns).
    cumtime: i64,
}

/// A frame on a thread's stack.
struct Frame {
    func: u32,
    c: bool,
    start: i64,
    /// Time spent in callees so far.
    children: i64,
    node: u32,
}

/// Before each of a thread's events, and at each close: write the slices
/// of its frames that are now known to be kept (see `crate::timeline`).
fn advance(
    timeline: &mut Option<Timeline>,
    funcs: &[Func],
    thread: &mut Thread,
    now: i64,
) -> Result<(), String> {
    let Some(t) = timeline else {
        return Ok(());
    };
    while let Some(f) = thread.stack.get(thread.committed) {
        if !t.keep(f.start, now) {
            break;
        }
        let func = &funcs[f.func as usize];
        let slice = Slice {
            id: f.func,
            label: &func.label,
            file: &func.file,
            line: func.line,
            c: f.c,
        };
        t.begin(thread.key, thread.shown_pid, thread.tid, f.start, &slice)?;
        thread.committed += 1;
    }
    Ok(())
}

struct Thread {
    /// Its number, in order of appearance (the timeline's track).
    key: u32,
    /// How many frames of `stack`, from the bottom, have their slice
    /// begun in the timeline.
    committed: usize,
    /// The host that recorded it (`bt2::intern_host`).
    host: u32,
    pid: i64,
    /// Its process's id in the timelines: `pid`, made unique across
    /// hosts (see `Analysis::shown_pid`).
    shown_pid: i64,
    tid: i64,
    /// Which process of that pid (a pid reused after an exit is another).
    incarnation: u32,
    procname: String,
    stack: Vec<Frame>,
    /// How many frames of each function are on the stack (recursion).
    active: FxMap<u32, u32>,
    /// This thread's root in the call tree.
    root: u32,
    last_ns: i64,
    /// The streams (CPUs) this thread ran on, most recent last: (stream,
    /// time of its first event there), the last `RUNS` changes.
    runs: std::collections::VecDeque<(usize, i64)>,
    /// Whether a loss of events may have cut into this thread.
    lost: bool,
}

/// How many CPU changes a thread remembers (to tell which losses hit it).
const RUNS: usize = 16;

impl Thread {
    /// Whether this thread ran on `stream` at some time in `[begin, end]`.
    fn ran_on(&self, stream: usize, begin: i64, end: i64) -> bool {
        let mut runs = self.runs.iter().peekable();
        while let Some(&(s, start)) = runs.next() {
            let until = runs.peek().map_or(i64::MAX, |&&(_, next)| next);
            if s == stream && start <= end && until > begin {
                return true;
            }
        }
        // Older than what is remembered: only the earliest run can tell.
        self.runs.len() == RUNS && self.runs.front().is_some_and(|&(_, t)| t > begin)
    }
}

/// The C functions that end their process: their frames never return.
const PROCESS_EXITS: [&str; 3] = ["posix._exit", "os._exit", "nt._exit"];

/// A call path: (parent path, function), with the time spent in it
/// itself. The folded stacks and the flame graph are its leaves' paths.
struct Node {
    parent: u32,
    func: u32,
    self_ns: i64,
}

const NO_FUNC: u32 = u32::MAX;

/// What the threads' events add up to: functions, call paths, and the
/// timeline being written.
struct Tables {
    funcs: Vec<Func>,
    func_index: FxMap<Vec<u8>, u32>,
    /// Scratch for building `func_index` keys without allocating.
    key: Vec<u8>,
    nodes: Vec<Node>,
    node_index: FxMap<(u32, u32), u32>,
    timeline: Option<Timeline>,
    /// The first event's time: the timeline's origin.
    t0: i64,
}

struct Analysis<'o> {
    opts: &'o Options,
    /// By (host, pid, incarnation, tid).
    threads: FxMap<(u32, i64, u32, i64), Thread>,
    /// The current incarnation of each (host, pid): bumped when a process
    /// exits (`os._exit`), so that a later process with the same pid is
    /// another.
    incarnations: FxMap<(u32, i64), u32>,
    /// The trace's host names, sorted, when it holds more than one (a
    /// relay's output folder): processes are then shown under them.
    hosts: Vec<String>,
    /// Host numbers (`bt2::intern_host`) to their place in `hosts`, and
    host_rank: FxMap<u32, usize>,
    /// Whether each host number is the one `--host` asks for.
    host_match: FxMap<u32, bool>,

    tables: Tables,
    events: u64,
    other_events: u64,
    first_ns: Option<i64>,
    last_ns: i64,
    discarded: Vec<Discarded>,
    /// Returns with no open frame: frames running before the recording
    /// started (or whose call was lost).
    unmatched: u64,
    /// Frames closed at a loss of events (their returns may be lost).
    cut_at_loss: u64,
    /// C frames closed by their caller's return, with nothing lost: C
    /// calls whose `c_return` never came.
    c_unreturned: u64,
    /// Frames open when their process ended (`os._exit`).
    closed_at_exit: u64,
    /// Frames still open when the trace ends.
    open_at_end: u64,
    /// The processes those frames were in ("host/process (pid)").
    running_at_end: Vec<String>,
    no_thread_context: bool,
    /// Threads seen so far (numbers the next one).
    threads_seen: u32,
    /// What the timeline's limits left out, once it is written.
    timeline_dropped: Option<Dropped>,
    /// The fast mode's batches, unpacked.
    fast: crate::read::Stats,
}

/// Reads `trace` and returns the table; writes the files `opts` names
/// (and removes them on failure). `tick` is called every 2^16 messages;
/// its error stops the reading.
pub fn report(
    trace: &Path,
    opts: &Options,
    tick: &mut dyn FnMut() -> Result<(), String>,
) -> Result<String, String> {
    let result = run(trace, opts, tick);
    if result.is_err() {
        for path in [
            &opts.flamegraph,
            &opts.folded,
            &opts.perfetto,
            &opts.perfetto_json,
        ]
        .into_iter()
        .flatten()
        {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

fn run(
    trace: &Path,
    opts: &Options,
    tick: &mut dyn FnMut() -> Result<(), String>,
) -> Result<String, String> {
    let hosts = crate::read::trace_hosts(trace);
    if let Some(host) = &opts.host {
        if !hosts.contains(host) {
            return Err(format!(
                "no host {host:?} in {} (its hosts: {})",
                trace.display(),
                if hosts.is_empty() {
                    "none named".to_owned()
                } else {
                    hosts.join(", ")
                }
            ));
        }
    }
    let mut analysis = Analysis {
        opts,
        threads: FxMap::default(),
        incarnations: FxMap::default(),
        hosts: if hosts.len() > 1 { hosts } else { Vec::new() },
        host_rank: FxMap::default(),
        host_match: FxMap::default(),
        tables: Tables {
            funcs: Vec::new(),
            func_index: FxMap::default(),
            key: Vec::new(),
            nodes: Vec::new(),
            node_index: FxMap::default(),
            timeline: Timeline::create(
                opts.perfetto.as_deref(),
                opts.perfetto_json.as_deref(),
                opts.limits,
            )?,
            t0: 0,
        },
        events: 0,
        other_events: 0,
        first_ns: None,
        last_ns: 0,
        discarded: Vec::new(),
        unmatched: 0,
        cut_at_loss: 0,
        c_unreturned: 0,
        closed_at_exit: 0,
        open_at_end: 0,
        running_at_end: Vec::new(),
        no_thread_context: false,
        threads_seen: 0,
        timeline_dropped: None,
        fast: crate::read::Stats::default(),
    };
    let mut seen = 0u64;
    let mut progress = Progress::new(trace);
    let mut each = |message: Message<'_>| {
        seen += 1;
        if seen % (1 << 16) == 0 {
            tick()?;
            if let Some(p) = &mut progress {
                p.update(analysis.events, analysis.first_ns, analysis.last_ns);
            }
        }
        analysis.message(message)
    };
    analysis.fast = crate::read::read(trace, &mut each)?;
    drop(progress);
    analysis.finish()?;
    let table = analysis.table(trace);
    if let Some(path) = &opts.folded {
        let mut out = create(path)?;
        for line in analysis.folded() {
            writeln!(out, "{line}").map_err(|e| write_error(path, e))?;
        }
        out.flush().map_err(|e| write_error(path, e))?;
    }
    if let Some(path) = &opts.flamegraph {
        analysis.flamegraph(path, trace)?;
    }
    Ok(table)
}

fn create(path: &Path) -> Result<BufWriter<File>, String> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn write_error(path: &Path, e: std::io::Error) -> String {
    format!("cannot write {}: {e}", path.display())
}
