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
//!
//! `json` writes the trace-event JSON, `proto` Perfetto's protobuf; this
//! file holds the limits that decide what either writes.

mod json;
mod proto;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use json::Json;
use proto::Proto;

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
