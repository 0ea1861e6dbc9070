//! `pyust report`: from a trace folder to answers — a cProfile-like table
//! per function, folded stacks and a flame graph, and Perfetto timelines
//! (`crate::timeline`).
//!
//! One pass over the trace in time order (libbabeltrace2, see
//! `ffi::bt2`). Memory is bounded by the threads' stack depths, the
//! number of distinct functions and of distinct call paths — never by the
//! number of events; the timeline is written as the events stream by.

use std::collections::hash_map::Entry;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::timeline::{Dropped, Limits, Slice, Timeline, Track};
use crate::fxhash::FxMap;
use crate::read::{Discarded, Event, Kind, Message};

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

impl Tables {
    /// A new root of the call tree (one per thread).
    fn root(&mut self) -> u32 {
        self.nodes.push(Node {
            parent: NO_FUNC,
            func: NO_FUNC,
            self_ns: 0,
        });
        self.nodes.len() as u32 - 1
    }

    /// The call path `parent` → `func`, made on first use.
    fn node(&mut self, parent: u32, func: u32) -> u32 {
        let nodes = &mut self.nodes;
        *self.node_index.entry((parent, func)).or_insert_with(|| {
            nodes.push(Node {
                parent,
                func,
                self_ns: 0,
            });
            nodes.len() as u32 - 1
        })
    }

    /// Closes the top frame of `thread` at `ns`; whether it was a C frame.
    fn close_top(&mut self, thread: &mut Thread, ns: i64) -> Result<bool, String> {
        advance(&mut self.timeline, &self.funcs, thread, ns)?;
        let frame = thread.stack.pop().expect("a frame to close");
        let duration = (ns - frame.start).max(0);
        let own = (duration - frame.children).max(0);
        if let Some(parent) = thread.stack.last_mut() {
            parent.children += duration;
        }
        let active = thread.active.entry(frame.func).or_insert(1);
        *active -= 1;
        let outermost = *active == 0;
        let func = &mut self.funcs[frame.func as usize];
        func.tottime += own;
        if outermost {
            func.cumtime += duration;
        }
        self.nodes[frame.node as usize].self_ns += own;
        if let Some(t) = &mut self.timeline {
            if thread.committed > thread.stack.len() {
                thread.committed -= 1;
                t.end(thread.key, thread.shown_pid, thread.tid, ns)?;
            } else {
                t.left_out(frame.start, ns);
            }
        }
        Ok(frame.c)
    }

    /// Closes every frame of `thread` at `ns` (or where each started, if
    /// later); how many there were.
    fn close_all(&mut self, thread: &mut Thread, ns: i64) -> Result<u64, String> {
        let mut closed = 0;
        while let Some(top) = thread.stack.last() {
            let at = ns.max(top.start);
            self.close_top(thread, at)?;
            closed += 1;
        }
        Ok(closed)
    }

    /// The function of a call event, registered on first sight.
    fn func(&mut self, ev: &Event<'_>, c: bool) -> u32 {
        self.key.clear();
        if c {
            self.key.extend_from_slice(b"C\0");
            self.key.extend_from_slice(ev.co_qualname.as_bytes());
        } else {
            self.key.extend_from_slice(b"P\0");
            for part in [ev.module, ev.co_qualname, ev.co_filename] {
                self.key.extend_from_slice(part.as_bytes());
                self.key.push(0);
            }
            self.key.extend_from_slice(&ev.line.to_le_bytes());
        }
        if let Some(&id) = self.func_index.get(self.key.as_slice()) {
            return id;
        }
        let id = self.funcs.len() as u32;
        let qualname = if ev.co_qualname.is_empty() {
            ev.co_name
        } else {
            ev.co_qualname
        };
        let label = if c || ev.module.is_empty() {
            qualname.to_owned()
        } else {
            format!("{}.{}", ev.module, qualname)
        };
        self.funcs.push(Func {
            label,
            file: if c {
                String::new()
            } else {
                ev.co_filename.to_owned()
            },
            line: if c { 0 } else { ev.line },
            calls: 0,
            tottime: 0,
            cumtime: 0,
        });
        self.func_index.insert(self.key.clone(), id);
        id
    }
}

/// How far apart the timelines put the pids of two hosts: above any
/// Linux pid (`pid_max` is at most 2^22): the first host's pids stay as
/// they are, the second host's pid 42 shows as 10000042.
const HOST_PID_STEP: i64 = 10_000_000;

impl Analysis<'_> {
    /// Host `host`'s place among the trace's hosts (0 when it has one).
    fn rank(&mut self, host: u32) -> usize {
        let hosts = &self.hosts;
        *self.host_rank.entry(host).or_insert_with(|| {
            let name = crate::read::host_name(host);
            hosts.iter().position(|h| *h == name).unwrap_or(0)
        })
    }

    /// The pid the timelines give process `pid` of `host`: distinct for
    /// the same pid on two hosts (a Perfetto timeline has one pid space).
    fn shown_pid(&mut self, host: u32, pid: i64) -> i64 {
        pid + self.rank(host) as i64 * HOST_PID_STEP
    }

    fn host_wanted(&mut self, host: u32) -> bool {
        let wanted = self.opts.host.as_deref().unwrap_or_default();
        *self
            .host_match
            .entry(host)
            .or_insert_with(|| crate::read::host_name(host) == wanted)
    }

    fn message(&mut self, message: Message<'_>) -> Result<(), String> {
        match message {
            Message::Event(ev) => self.event(&ev),
            // babeltrace2 says "0 discarded" at a stream's first packet
            // when older packets are gone (--max-size): nothing was lost.
            Message::Discarded(d) if d.count == 0 => Ok(()),
            Message::Discarded(d) => {
                self.lost(&d)?;
                self.discarded.push(d);
                Ok(())
            }
            Message::Other => {
                self.other_events += 1;
                Ok(())
            }
        }
    }

    fn event(&mut self, ev: &Event<'_>) -> Result<(), String> {
        if self.opts.pid.is_some_and(|p| p != ev.vpid)
            || self.opts.tid.is_some_and(|t| t != ev.vtid)
            || (self.opts.host.is_some() && !self.host_wanted(ev.host))
        {
            return Ok(());
        }
        self.events += 1;
        let shown_pid = if self.hosts.is_empty() {
            ev.vpid
        } else {
            self.shown_pid(ev.host, ev.vpid)
        };
        let tables = &mut self.tables;
        if self.first_ns.is_none() {
            self.first_ns = Some(ev.ns);
            if let Some(t) = &mut tables.timeline {
                // The window counts from the first event.
                let l = &mut t.limits;
                l.from = l.from.saturating_add(ev.ns).max(i64::MIN / 2);
                l.to = l.to.saturating_add(ev.ns);
                t.t0 = ev.ns;
            }
        }
        tables.t0 = self.first_ns.unwrap_or(ev.ns);
        self.last_ns = self.last_ns.max(ev.ns);
        if ev.vtid == 0 && ev.vpid == 0 {
            self.no_thread_context = true;
        }
        let incarnation = *self.incarnations.entry((ev.host, ev.vpid)).or_insert(0);
        let thread = match self.threads.entry((ev.host, ev.vpid, incarnation, ev.vtid)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let thread = Thread {
                    key: self.threads_seen,
                    committed: 0,
                    host: ev.host,
                    pid: ev.vpid,
                    shown_pid,
                    tid: ev.vtid,
                    incarnation,
                    procname: if self.hosts.is_empty() {
                        ev.procname.to_owned()
                    } else {
                        format!("{}/{}", crate::read::host_name(ev.host), ev.procname)
                    },
                    stack: Vec::new(),
                    active: FxMap::default(),
                    root: tables.root(),
                    last_ns: ev.ns,
                    runs: std::collections::VecDeque::new(),
                    lost: false,
                };
                self.threads_seen += 1;
                if let Some(t) = &mut tables.timeline {
                    let track = Track {
                        key: thread.key,
                        pid: thread.shown_pid,
                        tid: thread.tid,
                        incarnation: thread.incarnation,
                        procname: &thread.procname,
                    };
                    t.thread(&track, ev.ns)?;
                }
                e.insert(thread)
            }
        };
        thread.last_ns = ev.ns;
        advance(&mut tables.timeline, &tables.funcs, thread, ev.ns)?;
        if thread.runs.back().is_none_or(|&(s, _)| s != ev.stream) {
            if thread.runs.len() == RUNS {
                thread.runs.pop_front();
            }
            thread.runs.push_back((ev.stream, ev.ns));
        }
        match ev.kind {
            Kind::Call | Kind::CCall => {
                let c = ev.kind == Kind::CCall;
                let func = tables.func(ev, c);
                let parent = thread.stack.last().map_or(thread.root, |f| f.node);
                *thread.active.entry(func).or_insert(0) += 1;
                tables.funcs[func as usize].calls += 1;
                thread.stack.push(Frame {
                    func,
                    c,
                    start: ev.ns,
                    children: 0,
                    node: tables.node(parent, func),
                });
                advance(&mut tables.timeline, &tables.funcs, thread, ev.ns)?;
                if c && PROCESS_EXITS.contains(&ev.co_qualname) {
                    self.process_exit(ev.host, ev.vpid, ev.ns)?;
                }
            }
            Kind::Return | Kind::CReturn => {
                // A C frame left open means its c_return was lost: close it too.
                let want_c = ev.kind == Kind::CReturn;
                let matches = thread.stack.last().is_some_and(|f| f.c == want_c)
                    || (!want_c && thread.stack.iter().any(|f| !f.c));
                if !matches {
                    self.unmatched += 1;
                    return Ok(());
                }
                while tables.close_top(thread, ev.ns)? != want_c {
                    if thread.lost {
                        self.cut_at_loss += 1;
                    } else {
                        self.c_unreturned += 1;
                    }
                }
            }
            Kind::Def | Kind::Batch => {} // unpacked before (decode.rs)
            Kind::Exception => {
                if let Some(t) = &mut tables.timeline {
                    t.instant(
                        thread.key,
                        thread.shown_pid,
                        ev.vtid,
                        ev.ns,
                        ev.exc_type,
                        ev.co_qualname,
                        ev.line,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// LTTng lost events of one stream (one CPU's buffer): the threads
    /// last seen on it may have lost calls or returns, so their open
    /// frames are closed at the start of the loss and their stacks start
    /// over (a return with no open frame is then ignored).
    fn lost(&mut self, d: &Discarded) -> Result<(), String> {
        let at = d.begin_ns.unwrap_or(self.last_ns);
        let until = d.end_ns.unwrap_or(at).max(at);
        for thread in self.threads.values_mut() {
            if !thread.ran_on(d.stream, at, until) {
                continue;
            }
            thread.lost = true;
            self.cut_at_loss += self.tables.close_all(thread, at)?;
        }
        Ok(())
    }

    /// Process `pid` ended at `ns` (`os._exit`): the frames of its
    /// threads close there, and a later event of that pid is another
    /// process.
    fn process_exit(&mut self, host: u32, pid: i64, ns: i64) -> Result<(), String> {
        let incarnation = self.incarnations.entry((host, pid)).or_insert(0);
        let current = *incarnation;
        *incarnation += 1;
        let mut threads: Vec<&mut Thread> = self
            .threads
            .values_mut()
            .filter(|t| t.host == host && t.pid == pid && t.incarnation == current)
            .collect();
        threads.sort_unstable_by_key(|t| t.tid);
        for thread in threads {
            self.closed_at_exit += self.tables.close_all(thread, ns)?;
        }
        Ok(())
    }

    /// Closes the frames still open when the trace ends, each at the last
    /// event of its own process (not of the whole trace: a process that
    /// ended earlier did not run until then).
    fn finish(&mut self) -> Result<(), String> {
        let mut process_end: FxMap<(u32, i64, u32), i64> = FxMap::default();
        for t in self.threads.values() {
            let end = process_end
                .entry((t.host, t.pid, t.incarnation))
                .or_insert(t.last_ns);
            *end = (*end).max(t.last_ns);
        }
        let mut threads: Vec<&mut Thread> = self.threads.values_mut().collect();
        threads.sort_unstable_by_key(|t| (t.host, t.pid, t.incarnation, t.tid));
        let mut running = Vec::new();
        for thread in threads {
            let end = process_end[&(thread.host, thread.pid, thread.incarnation)];
            let open = self.tables.close_all(thread, end)?;
            self.open_at_end += open;
            let process = (thread.host, thread.pid, thread.incarnation);
            if open > 0 && running.last().is_none_or(|(p, _)| *p != process) {
                let name = format!("{} ({})", thread.procname, thread.pid);
                running.push((process, name));
            }
        }
        self.running_at_end = running.into_iter().map(|(_, name)| name).collect();
        if let Some(mut t) = self.tables.timeline.take() {
            self.timeline_dropped = Some(std::mem::take(&mut t.dropped));
            t.finish()?;
        }
        Ok(())
    }

    fn table(&self, trace: &Path) -> String {
        let mut out = String::new();
        let span = self.first_ns.map_or(0, |f| self.last_ns - f);
        let processes: std::collections::BTreeSet<(u32, i64, u32)> = self
            .threads
            .values()
            .map(|t| (t.host, t.pid, t.incarnation))
            .collect();
        let _ = writeln!(out, "pyust report: {}", trace.display());
        let _ = writeln!(
            out,
            "{} python events, {} process(es), {} thread(s), {:.6} s from first to last event",
            self.events,
            processes.len(),
            self.threads.len(),
            span as f64 / 1e9
        );
        if !self.hosts.is_empty() {
            // Each host's processes under its name (pids are per host).
            let mut by_host: std::collections::BTreeMap<String, Vec<(i64, u32, &str)>> = self
                .hosts
                .iter()
                .filter(|h| self.opts.host.as_ref().is_none_or(|w| w == *h))
                .map(|h| (h.clone(), Vec::new()))
                .collect();
            for t in self.threads.values() {
                let name = crate::read::host_name(t.host);
                let procname = t.procname.split_once('/').map_or(&*t.procname, |(_, p)| p);
                by_host
                    .entry(name)
                    .or_default()
                    .push((t.pid, t.incarnation, procname));
            }
            let _ = writeln!(out, "{} host(s):", by_host.len());
            for (host, mut procs) in by_host {
                // A process once (its threads may carry other names).
                procs.sort_unstable();
                procs.dedup_by_key(|&mut (pid, inc, _)| (pid, inc));
                let list: Vec<String> = procs
                    .iter()
                    .map(|(pid, _, name)| format!("{name} ({pid})"))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {host}: {} process(es): {}",
                    procs.len(),
                    if list.is_empty() {
                        "no Python events".to_owned()
                    } else {
                        list.join(", ")
                    }
                );
            }
        }
        let fast = &self.fast;
        if fast.batches > 0 && fast.duplicate < fast.events {
            let _ = writeln!(
                out,
                "fast mode: {} event(s) unpacked from {} batch(es)",
                fast.events - fast.duplicate,
                fast.batches
            );
        }
        if fast.unresolved > 0 {
            let _ = writeln!(
                out,
                "{} event(s) of ids with no definition in the trace (recording started while \
                 the program ran; definitions are sent again every second): named ?",
                fast.unresolved
            );
        }
        if fast.late > 0 {
            let _ = writeln!(
                out,
                "{} event(s) of batches committed late: out of time order across threads",
                fast.late
            );
        }
        if fast.duplicate > 0 {
            let _ = writeln!(
                out,
                "{} fast-mode event(s) of processes the trace also holds readable events of: left out",
                fast.duplicate
            );
        }
        if fast.bad > 0 {
            let _ = writeln!(
                out,
                "{} batch(es) cut short: their last records skipped",
                fast.bad
            );
        }
        if let Some(d) = &self.timeline_dropped {
            let _ = writeln!(out, "{}", d.summary(&self.opts.limits));
        }
        let lost: u64 = self.discarded.iter().map(|d| d.count).sum();
        if self.discarded.is_empty() {
            let _ = writeln!(out, "discarded events: 0");
        } else {
            let _ = writeln!(
                out,
                "discarded events: {lost}, in {} place(s) (LTTng's buffers were full):",
                self.discarded.len()
            );
            for d in self.discarded.iter().take(10) {
                let when = match (d.begin_ns, d.end_ns, self.first_ns) {
                    (Some(b), Some(e), Some(f)) => {
                        format!(
                            " between +{:.6} s and +{:.6} s",
                            (b - f) as f64 / 1e9,
                            (e - f) as f64 / 1e9
                        )
                    }
                    _ => String::new(),
                };
                let _ = writeln!(out, "  {} in stream {}{when}", d.count, d.stream_name);
            }
            if self.discarded.len() > 10 {
                let _ = writeln!(out, "  ... and {} more", self.discarded.len() - 10);
            }
            let _ = writeln!(
                out,
                "  {} frame(s) open on those streams' threads were closed at the loss",
                self.cut_at_loss
            );
        }
        if self.unmatched > 0 {
            let _ = writeln!(
                out,
                "{} return(s) without a call (frames running before recording started, or calls lost): not counted",
                self.unmatched
            );
        }
        if self.c_unreturned > 0 {
            let _ = writeln!(
                out,
                "{} C call(s) without a c_return: closed by their caller's return",
                self.c_unreturned
            );
        }
        if self.closed_at_exit > 0 {
            let _ = writeln!(
                out,
                "{} frame(s) open when their process exited (os._exit): closed there",
                self.closed_at_exit
            );
        }
        if self.open_at_end > 0 {
            let names = &self.running_at_end;
            let _ = writeln!(
                out,
                "{} frame(s) still running when the trace ends: counted until their process's last event",
                self.open_at_end
            );
            let _ = writeln!(
                out,
                "  in {} process(es) (a recording cut short, a program stopped mid-run, or threads \
                 left running at exit): {}{}",
                names.len(),
                names[..names.len().min(5)].join(", "),
                if names.len() > 5 { ", ..." } else { "" }
            );
        }
        if self.no_thread_context {
            let _ = writeln!(
                out,
                "warning: events without vpid/vtid context: threads cannot be told apart \
                 (record with `pyust record`, or `lttng add-context -u -t vpid -t vtid`)"
            );
        }
        if self.other_events > 0 {
            let _ = writeln!(
                out,
                "{} other events (other providers, kernel) skipped",
                self.other_events
            );
        }
        let mut rows: Vec<&Func> = self.tables.funcs.iter().filter(|f| f.calls > 0).collect();
        match self.opts.sort {
            Sort::Tottime => {
                rows.sort_by(|a, b| b.tottime.cmp(&a.tottime).then(b.calls.cmp(&a.calls)))
            }
            Sort::Cumtime => {
                rows.sort_by(|a, b| b.cumtime.cmp(&a.cumtime).then(b.calls.cmp(&a.calls)))
            }
            Sort::Calls => {
                rows.sort_by(|a, b| b.calls.cmp(&a.calls).then(b.tottime.cmp(&a.tottime)))
            }
        }
        let shown = if self.opts.limit == 0 {
            rows.len()
        } else {
            rows.len().min(self.opts.limit)
        };
        let _ = writeln!(
            out,
            "\n{:>10} {:>12} {:>12} {:>12} {:>12}  function (file:line)",
            "calls", "tottime(s)", "cumtime(s)", "tot/call(us)", "cum/call(us)"
        );
        for f in &rows[..shown] {
            let calls = f.calls as f64;
            let place = if f.file.is_empty() {
                "(C)".to_owned()
            } else {
                format!("({}:{})", f.file, f.line)
            };
            let _ = writeln!(
                out,
                "{:>10} {:>12.6} {:>12.6} {:>12.3} {:>12.3}  {} {place}",
                f.calls,
                f.tottime as f64 / 1e9,
                f.cumtime as f64 / 1e9,
                f.tottime as f64 / 1e3 / calls,
                f.cumtime as f64 / 1e3 / calls,
                f.label,
            );
        }
        if shown < rows.len() {
            let _ = writeln!(out, "... {} more (--limit 0 shows all)", rows.len() - shown);
        }
        out
    }

    /// Folded stacks, `process;thread;frames... self_ns`, one line per
    /// call path with time of its own.
    fn folded(&self) -> Vec<String> {
        let mut roots: FxMap<u32, String> = FxMap::default();
        for t in self.threads.values() {
            roots.insert(
                t.root,
                format!(
                    "{} ({});{} ({})",
                    sanitize(&t.procname),
                    t.pid,
                    if t.pid == t.tid {
                        "main thread"
                    } else {
                        "thread"
                    },
                    t.tid
                ),
            );
        }
        let mut lines = Vec::new();
        let mut path = Vec::new();
        let Tables { funcs, nodes, .. } = &self.tables;
        for node in nodes {
            if node.func == NO_FUNC || node.self_ns <= 0 {
                continue;
            }
            path.clear();
            let mut at = node;
            let mut root = node.parent;
            while at.func != NO_FUNC {
                path.push(sanitize(&funcs[at.func as usize].label));
                root = at.parent;
                at = &nodes[at.parent as usize];
            }
            path.push(roots.get(&root).cloned().unwrap_or_default());
            path.reverse();
            lines.push(format!("{} {}", path.join(";"), node.self_ns));
        }
        lines.sort();
        lines
    }

    fn flamegraph(&self, path: &Path, trace: &Path) -> Result<(), String> {
        let lines = self.folded();
        let mut options = inferno::flamegraph::Options::default();
        options.title = format!("pyust: {}", trace.display());
        options.count_name = "ns".to_owned();
        options.name_type = "Function:".to_owned();
        let out = create(path)?;
        if lines.is_empty() {
            return Err("no Python call in the trace: no flame graph to draw".into());
        }
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// Frame names in folded stacks: `;` separates frames, so it is replaced.
fn sanitize(name: &str) -> String {
    name.replace(';', ":")
}

/// `report`'s progress on stderr, only when it is a terminal: events read,
/// their rate, and the share of the trace's bytes behind the current
/// event — the packets that end before it, from LTTng's packet indexes.
struct Progress {
    bar: indicatif::ProgressBar,
    /// (end of packet in clock cycles, bytes up to and including it).
    packets: Vec<(u64, u64)>,
    first_cycles: u64,
    started: std::time::Instant,
}

impl Progress {
    fn new(trace: &Path) -> Option<Progress> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let mut packets = Vec::new();
        let mut first_cycles = u64::MAX;
        index_files(trace, &mut |data| {
            // LTTng's CTF index: a big-endian header (magic, major, minor,
            // entry size), then per packet: offset, packet size (bits),
            // content size, timestamp begin, timestamp end, ...
            let word = |at: usize| u64::from_be_bytes(data[at..at + 8].try_into().unwrap());
            let half = |at: usize| u32::from_be_bytes(data[at..at + 4].try_into().unwrap());
            if data.len() < 16 || half(0) != 0xC1F1_DCC1 {
                return;
            }
            let entry = half(12) as usize;
            if entry < 40 {
                return;
            }
            let mut at = 16;
            while at + entry <= data.len() {
                first_cycles = first_cycles.min(word(at + 24));
                packets.push((word(at + 32), word(at + 8) / 8));
                at += entry;
            }
        });
        packets.sort_unstable();
        let mut total = 0;
        for p in &mut packets {
            total += p.1;
            p.1 = total;
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "pyust report: {msg} [{bar:24}] {percent}% of {total_bytes} ({elapsed})",
            )
            .ok()?
            .progress_chars("=> "),
        );
        Some(Progress {
            bar,
            packets,
            first_cycles,
            started: std::time::Instant::now(),
        })
    }

    fn update(&mut self, events: u64, first_ns: Option<i64>, now_ns: i64) {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "{:.1} M events, {:.2} M/s",
            events as f64 / 1e6,
            events as f64 / elapsed / 1e6
        ));
        // The indexes count clock cycles (LTTng's clock: 1 GHz), the
        // events nanoseconds since the epoch: aligned on the first event.
        if let Some(first) = first_ns {
            let cycles = self
                .first_cycles
                .saturating_add((now_ns - first).max(0) as u64);
            let done = self.packets.partition_point(|&(end, _)| end <= cycles);
            let bytes = done.checked_sub(1).map_or(0, |i| self.packets[i].1);
            self.bar.set_position(bytes);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Calls `each` with the contents of every CTF index file under `dir`.
fn index_files(dir: &Path, each: &mut dyn FnMut(&[u8])) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            index_files(&path, each);
        } else if path.extension().is_some_and(|e| e == "idx") {
            if let Ok(data) = std::fs::read(&path) {
                each(&data);
            }
        }
    }
}
