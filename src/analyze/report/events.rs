//! The one pass: each event moves its thread's stack of frames, charges
//! time to functions and call paths (`Tables`), and hands the timeline
//! its slices.

use std::collections::hash_map::Entry;

use super::*;

impl Tables {
    /// A new root of the call tree (one per thread).
    pub(super) fn root(&mut self) -> u32 {
        self.nodes.push(Node {
            parent: NO_FUNC,
            func: NO_FUNC,
            self_ns: 0,
        });
        self.nodes.len() as u32 - 1
    }

    /// The call path `parent` → `func`, made on first use.
    pub(super) fn node(&mut self, parent: u32, func: u32) -> u32 {
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
    pub(super) fn close_top(&mut self, thread: &mut Thread, ns: i64) -> Result<bool, String> {
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
    pub(super) fn close_all(&mut self, thread: &mut Thread, ns: i64) -> Result<u64, String> {
        let mut closed = 0;
        while let Some(top) = thread.stack.last() {
            let at = ns.max(top.start);
            self.close_top(thread, at)?;
            closed += 1;
        }
        Ok(closed)
    }

    /// The function of a call event, registered on first sight.
    pub(super) fn func(&mut self, ev: &Event<'_>, c: bool) -> u32 {
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
pub(super) const HOST_PID_STEP: i64 = 10_000_000;

impl Analysis<'_> {
    /// Host `host`'s place among the trace's hosts (0 when it has one).
    pub(super) fn rank(&mut self, host: u32) -> usize {
        let hosts = &self.hosts;
        *self.host_rank.entry(host).or_insert_with(|| {
            let name = crate::read::host_name(host);
            hosts.iter().position(|h| *h == name).unwrap_or(0)
        })
    }

    /// The pid the timelines give process `pid` of `host`: distinct for
    /// the same pid on two hosts (a Perfetto timeline has one pid space).
    pub(super) fn shown_pid(&mut self, host: u32, pid: i64) -> i64 {
        pid + self.rank(host) as i64 * HOST_PID_STEP
    }

    pub(super) fn host_wanted(&mut self, host: u32) -> bool {
        let wanted = self.opts.host.as_deref().unwrap_or_default();
        *self
            .host_match
            .entry(host)
            .or_insert_with(|| crate::read::host_name(host) == wanted)
    }

    pub(super) fn message(&mut self, message: Message<'_>) -> Result<(), String> {
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

    pub(super) fn event(&mut self, ev: &Event<'_>) -> Result<(), String> {
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
    pub(super) fn lost(&mut self, d: &Discarded) -> Result<(), String> {
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
    pub(super) fn process_exit(&mut self, host: u32, pid: i64, ns: i64) -> Result<(), String> {
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
    pub(super) fn finish(&mut self) -> Result<(), String> {
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
}
