//! What the pass leaves, written out: the table (cProfile's columns, per
//! host and process), folded stacks and the flame graph.

use std::fmt::Write as _;

use super::*;

impl Analysis<'_> {
    pub(super) fn table(&self, trace: &Path) -> String {
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
    pub(super) fn folded(&self) -> Vec<String> {
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

    pub(super) fn flamegraph(&self, path: &Path, trace: &Path) -> Result<(), String> {
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
pub(super) fn sanitize(name: &str) -> String {
    name.replace(';', ":")
}
