//! `pyust top`: a live table of the hottest functions of running
//! programs, read from an LTTng relay daemon's live sessions
//! (`decode::live`, libbabeltrace2's `src.ctf.lttng-live`), per host and
//! process, over the last interval and since attaching.
//!
//! Self time is the time a function spends as the innermost frame of a
//! thread: each event charges the time since the thread's previous one to
//! the frame then on top. At each table, the frames still on top are
//! charged up to the latest event of their host, so a function that runs
//! long without calling anything shows while it runs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::fxhash::FxMap;
use crate::read::{Event, Kind, Message};

pub struct Options {
    /// Time between tables.
    pub interval: Duration,
    /// One table (after the first interval that saw events), then stop.
    pub once: bool,
    /// Function rows per table (0: all).
    pub limit: usize,
    /// Redraw in place (a terminal) rather than print table after table.
    pub redraw: bool,
    /// What the tables' first line names (the relay and its sessions).
    pub title: String,
}

/// Calls and self time (ns).
#[derive(Default, Clone, Copy)]
struct Counts {
    calls: u64,
    self_ns: i64,
}

/// One function of one process.
struct Row {
    host: u32,
    pid: i64,
    func: u32,
    last: Counts,
    total: Counts,
}

struct Thread {
    /// Rows of the frames on the stack (innermost last), and whether each
    /// is a C function.
    stack: Vec<(u32, bool)>,
    /// Time up to which the top frame was charged.
    mark: i64,
}

#[derive(Default)]
struct Process {
    procname: String,
    last_events: u64,
    total_events: u64,
}

#[derive(Default)]
struct State {
    /// Function labels ("module.qualname (file:line)", or a C function's
    /// name) and their index, keyed by the names that make them.
    funcs: Vec<String>,
    func_index: FxMap<Vec<u8>, u32>,
    key: Vec<u8>,
    rows: Vec<Row>,
    row_index: FxMap<(u32, i64, u32), u32>,
    threads: FxMap<(u32, i64, i64), Thread>,
    processes: BTreeMap<(u32, i64), Process>,
    /// Latest event time of each host (their clocks are their own), and
    /// where the previous table left it (or the host's first event).
    latest: FxMap<u32, i64>,
    shown_until: FxMap<u32, i64>,
    last_events: u64,
    total_events: u64,
    last_lost: u64,
    total_lost: u64,
}

impl State {
    fn message(&mut self, message: Message<'_>) {
        match message {
            Message::Event(ev) => self.event(&ev),
            Message::Discarded(d) => {
                self.last_lost += d.count;
                self.total_lost += d.count;
            }
            Message::Other => {}
        }
    }

    fn func(&mut self, ev: &Event<'_>, c: bool) -> u32 {
        self.key.clear();
        self.key.push(c as u8);
        for part in [ev.module, ev.co_qualname, ev.co_name, ev.co_filename] {
            self.key.extend_from_slice(part.as_bytes());
            self.key.push(0);
        }
        if !c {
            self.key.extend_from_slice(&ev.line.to_le_bytes());
        }
        if let Some(&id) = self.func_index.get(self.key.as_slice()) {
            return id;
        }
        let qualname = if ev.co_qualname.is_empty() {
            ev.co_name
        } else {
            ev.co_qualname
        };
        let label = if c {
            qualname.to_owned()
        } else {
            let name = if ev.module.is_empty() {
                qualname.to_owned()
            } else {
                format!("{}.{qualname}", ev.module)
            };
            let file = ev.co_filename.rsplit('/').next().unwrap_or_default();
            format!("{name} ({file}:{})", ev.line)
        };
        let id = self.funcs.len() as u32;
        self.funcs.push(label);
        self.func_index.insert(self.key.clone(), id);
        id
    }

    fn event(&mut self, ev: &Event<'_>) {
        if matches!(ev.kind, Kind::Def | Kind::Batch) {
            return; // unpacked before (decode.rs)
        }
        let latest = self.latest.entry(ev.host).or_insert(ev.ns);
        *latest = (*latest).max(ev.ns);
        self.shown_until.entry(ev.host).or_insert(ev.ns);
        self.last_events += 1;
        self.total_events += 1;
        let process = self.processes.entry((ev.host, ev.vpid)).or_default();
        if (process.procname.is_empty() || ev.vpid == ev.vtid) && process.procname != ev.procname {
            process.procname = ev.procname.to_owned();
        }
        process.last_events += 1;
        process.total_events += 1;
        let row = match ev.kind {
            Kind::Call | Kind::CCall => {
                let func = self.func(ev, ev.kind == Kind::CCall);
                let next = self.rows.len() as u32;
                let row = *self
                    .row_index
                    .entry((ev.host, ev.vpid, func))
                    .or_insert(next);
                if row == next {
                    self.rows.push(Row {
                        host: ev.host,
                        pid: ev.vpid,
                        func,
                        last: Counts::default(),
                        total: Counts::default(),
                    });
                }
                Some(row)
            }
            _ => None,
        };
        let thread = self
            .threads
            .entry((ev.host, ev.vpid, ev.vtid))
            .or_insert(Thread {
                stack: Vec::new(),
                mark: ev.ns,
            });
        if let Some(&(top, _)) = thread.stack.last() {
            let r = &mut self.rows[top as usize];
            let spent = (ev.ns - thread.mark).max(0);
            r.last.self_ns += spent;
            r.total.self_ns += spent;
        }
        thread.mark = thread.mark.max(ev.ns);
        match ev.kind {
            Kind::Call | Kind::CCall => {
                let row = row.expect("a call has its row");
                let r = &mut self.rows[row as usize];
                r.last.calls += 1;
                r.total.calls += 1;
                thread.stack.push((row, ev.kind == Kind::CCall));
            }
            Kind::Return | Kind::CReturn => {
                let want_c = ev.kind == Kind::CReturn;
                if thread.stack.last().is_some_and(|&(_, c)| c == want_c) {
                    thread.stack.pop();
                } else if !want_c {
                    // C frames whose c_return was lost (or never came) end
                    // with their caller.
                    while let Some((_, c)) = thread.stack.pop() {
                        if !c {
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Charges the frames on top up to their host's latest event.
    fn charge_running(&mut self) {
        for (&(host, _, _), thread) in &mut self.threads {
            let Some(&(top, _)) = thread.stack.last() else {
                continue;
            };
            let now = self.latest.get(&host).copied().unwrap_or(thread.mark);
            if now > thread.mark {
                let r = &mut self.rows[top as usize];
                r.last.self_ns += now - thread.mark;
                r.total.self_ns += now - thread.mark;
                thread.mark = now;
            }
        }
    }

    /// The function running in process (host, pid) now: the innermost
    /// frame of its main thread, else of its most recently active one.
    fn running(&self, host: u32, pid: i64) -> Option<&str> {
        let main = self.threads.get(&(host, pid, pid));
        let thread = match main {
            Some(t) if !t.stack.is_empty() => Some(t),
            _ => self
                .threads
                .iter()
                .filter(|(&(h, p, _), t)| h == host && p == pid && !t.stack.is_empty())
                .max_by_key(|(&(_, _, tid), t)| (t.mark, tid))
                .map(|(_, t)| t),
        }?;
        let &(row, _) = thread.stack.last()?;
        Some(&self.funcs[self.rows[row as usize].func as usize])
    }

    /// The table of the interval that ends now, which then starts anew.
    fn table(&mut self, opts: &Options, attached: Duration, interval: Duration) -> String {
        self.charge_running();
        // The interval is the stretch of trace time this table adds (a
        // live session sends what it recorded about once a second: the
        // first table may cover more than `interval`).
        let covered = self
            .latest
            .iter()
            .map(|(host, &ns)| ns - self.shown_until.get(host).copied().unwrap_or(ns))
            .max()
            .unwrap_or(0);
        for (host, &ns) in &self.latest {
            self.shown_until.insert(*host, ns);
        }
        let secs = if covered > 0 {
            covered as f64 / 1e9
        } else {
            interval.as_secs_f64()
        }
        .max(1e-3);
        let mut out = String::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (h, m, s) = ((now / 3600) % 24, (now / 60) % 60, now % 60);
        let _ = writeln!(
            out,
            "pyust top: {}  {h:02}:{m:02}:{s:02} UTC, {:.0} s attached",
            opts.title,
            attached.as_secs_f64()
        );
        let _ = write!(
            out,
            "{} event(s) in the last {secs:.1} s, {} since attached",
            self.last_events, self.total_events
        );
        if self.total_lost > 0 {
            let _ = write!(
                out,
                "; discarded by LTTng: {} in the last {secs:.1} s, {} since attached",
                self.last_lost, self.total_lost
            );
        }
        out.push('\n');
        let hosts: Vec<String> = {
            let mut seen: Vec<u32> = self.processes.keys().map(|&(h, _)| h).collect();
            seen.dedup();
            let top = seen.iter().copied().max().unwrap_or(0) as usize;
            (0..=top as u32).map(crate::read::host_name).collect()
        };
        let host = |h: u32| -> &str {
            match hosts[h as usize].as_str() {
                "" => "?",
                name => name,
            }
        };
        let width = hosts.iter().map(String::len).max().unwrap_or(1).max(4);
        let _ = writeln!(
            out,
            "\n{:<width$} {:>8} {:<16} {:>10}  running now",
            "host", "pid", "process", "events/s"
        );
        for (&(h, pid), p) in &self.processes {
            let _ = writeln!(
                out,
                "{:<width$} {:>8} {:<16} {:>10.0}  {}",
                host(h),
                pid,
                p.procname,
                p.last_events as f64 / secs,
                self.running(h, pid).unwrap_or("-"),
            );
        }
        let mut order: Vec<usize> = (0..self.rows.len())
            .filter(|&i| self.rows[i].total.calls > 0 || self.rows[i].total.self_ns > 0)
            .collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&self.rows[a], &self.rows[b]);
            (b.last.self_ns, b.total.self_ns, b.last.calls).cmp(&(
                a.last.self_ns,
                a.total.self_ns,
                a.last.calls,
            ))
        });
        let shown = match opts.limit {
            0 => order.len(),
            n => n.min(order.len()),
        };
        let _ = writeln!(
            out,
            "\n{:>21}   {:>21}",
            format!("last {secs:.1} s"),
            "since attached"
        );
        let _ = writeln!(
            out,
            "{:>10} {:>10}   {:>10} {:>10}  {:<width$} {:>8}  function",
            "self(s)", "calls", "self(s)", "calls", "host", "pid"
        );
        for &i in &order[..shown] {
            let r = &self.rows[i];
            let _ = writeln!(
                out,
                "{:>10.3} {:>10} {:>10.3} {:>10}  {:<width$} {:>8}  {}",
                r.last.self_ns as f64 / 1e9,
                r.last.calls,
                r.total.self_ns as f64 / 1e9,
                r.total.calls,
                host(r.host),
                r.pid,
                self.funcs[r.func as usize],
            );
        }
        if shown < order.len() {
            let _ = writeln!(
                out,
                "... {} more (--limit 0 shows all)",
                order.len() - shown
            );
        }
        for r in &mut self.rows {
            r.last = Counts::default();
        }
        for p in self.processes.values_mut() {
            p.last_events = 0;
        }
        self.last_events = 0;
        self.last_lost = 0;
        out
    }
}

/// How `top` ended.
pub enum End {
    /// The sessions ended (their programs finished).
    Ended,
    /// `--once` printed its table.
    Once,
    /// Standard output was closed (a pipe's reader ended).
    Closed,
}

/// Attaches to the live sessions at `urls` and prints a table every
/// interval until they end, `--once` is done, or `tick` fails (Ctrl-C).
pub fn top(
    urls: &[String],
    opts: &Options,
    tick: &mut dyn FnMut() -> Result<(), String>,
) -> Result<End, String> {
    let state = RefCell::new(State::default());
    let start = Instant::now();
    let mut interval_start = start;
    let mut last_tick = start;
    let mut waited = 0u32;
    let printed = std::cell::Cell::new(false);
    let closed = std::cell::Cell::new(false);
    let print = |text: &str| {
        let mut stdout = std::io::stdout().lock();
        let clear = if opts.redraw { "\x1b[H\x1b[2J" } else { "" };
        let sep = if printed.get() && !opts.redraw {
            "\n"
        } else {
            ""
        };
        if write!(stdout, "{clear}{sep}{text}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            closed.set(true);
        }
        printed.set(true);
    };
    let mut each = |message: Message<'_>| {
        state.borrow_mut().message(message);
        Ok(())
    };
    let mut pace = |_idle: bool| -> Result<bool, String> {
        let now = Instant::now();
        if now - last_tick >= Duration::from_millis(100) {
            last_tick = now;
            tick()?;
        }
        if now - interval_start < opts.interval {
            return Ok(false);
        }
        let mut state = state.borrow_mut();
        // --once waits for data (up to ten intervals): a live session
        // sends what it recorded about once a second.
        if opts.once && state.last_events == 0 && waited < 10 {
            waited += 1;
            interval_start = now;
            return Ok(false);
        }
        let text = state.table(opts, now - start, now - interval_start);
        interval_start = now;
        print(&text);
        Ok(opts.once || closed.get())
    };
    crate::read::live(urls, &mut each, &mut pace)?;
    if closed.get() {
        return Ok(End::Closed);
    }
    if opts.once && printed.get() {
        return Ok(End::Once);
    }
    // The sessions ended: what came since the last table.
    let now = Instant::now();
    let text = state
        .borrow_mut()
        .table(opts, now - start, now - interval_start);
    print(&text);
    Ok(End::Ended)
}
