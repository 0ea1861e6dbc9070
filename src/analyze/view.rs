//! `pyust view` of a trace that holds the fast mode's batches: every
//! `python:*` event, the readable ones as recorded and the batches
//! unpacked, printed in the text babeltrace2 prints readable events in
//! (times of day in UTC, as `babeltrace2 --clock-gmt`; no `cpu_id`: a
//! batch's events ran on whichever CPUs its thread was on).

use std::io::Write;
use std::path::Path;

use crate::read::{Event, Kind, Message};

/// The trace's host name, from the metadata of its first trace folder.
fn hostname(trace: &Path) -> String {
    let mut dirs = Vec::new();
    crate::read::find_traces(trace, &mut dirs, 0);
    dirs.first()
        .map(|d| crate::read::metadata_hostname(d))
        .unwrap_or_default()
}

/// A string field as babeltrace2 prints it.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write_event(
    out: &mut impl Write,
    host: &str,
    ev: &Event<'_>,
    last: &mut Option<i64>,
) -> std::io::Result<()> {
    let ns = ev.ns.rem_euclid(86_400 * 1_000_000_000);
    let (h, m, s, frac) = (
        ns / 3_600_000_000_000,
        ns / 60_000_000_000 % 60,
        ns / 1_000_000_000 % 60,
        ns % 1_000_000_000,
    );
    let delta = match *last {
        Some(prev) => {
            let d = ev.ns - prev;
            format!("+{}.{:09}", d / 1_000_000_000, d % 1_000_000_000)
        }
        None => "+?.?????????".to_owned(),
    };
    *last = Some(ev.ns);
    let (name, payload) = match ev.kind {
        Kind::Call => (
            "call",
            format!(
                "{{ co_name = {}, co_qualname = {}, module = {}, co_filename = {}, co_firstlineno = {} }}",
                quoted(ev.co_name),
                quoted(ev.co_qualname),
                quoted(ev.module),
                quoted(ev.co_filename),
                ev.line
            ),
        ),
        Kind::Return => ("return", "{ }".to_owned()),
        Kind::CCall => (
            "c_call",
            format!(
                "{{ co_name = {}, co_qualname = {} }}",
                quoted(ev.co_name),
                quoted(ev.co_qualname)
            ),
        ),
        Kind::CReturn => ("c_return", "{ }".to_owned()),
        Kind::Exception => (
            "exception",
            format!(
                "{{ exc_type = {}, co_qualname = {}, lineno = {} }}",
                quoted(ev.exc_type),
                quoted(ev.co_qualname),
                ev.line
            ),
        ),
        Kind::Def | Kind::Batch => return Ok(()),
    };
    writeln!(
        out,
        "[{h:02}:{m:02}:{s:02}.{frac:09}] ({delta}) {host} python:{name}: {{ vpid = {}, vtid = {}, procname = {} }}, {payload}",
        ev.vpid,
        ev.vtid,
        quoted(ev.procname)
    )
}

/// Prints the trace's `python:*` events to stdout; what LTTng discarded
/// goes to stderr, as babeltrace2 says it.
/// `tick` is called every 2^16 messages; its error stops the reading.
pub fn view(trace: &Path, tick: &mut dyn FnMut() -> Result<(), String>) -> Result<(), String> {
    // Each event's own host (a relay's folder holds several), the first
    // trace's when the reader gives none.
    let default_host = hostname(trace);
    let mut hosts: Vec<String> = Vec::new();
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut last = None;
    let mut broken_pipe = false;
    let mut each = |message: Message<'_>| -> Result<(), String> {
        seen += 1;
        if seen % (1 << 16) == 0 {
            tick()?;
        }
        match message {
            Message::Event(ev) => {
                let host = match ev.host as usize {
                    0 => &default_host,
                    n => {
                        while hosts.len() < n {
                            hosts.push(crate::read::host_name(hosts.len() as u32 + 1));
                        }
                        &hosts[n - 1]
                    }
                };
                write_event(&mut out, host, &ev, &mut last).map_err(|e| {
                    broken_pipe = e.kind() == std::io::ErrorKind::BrokenPipe;
                    e.to_string()
                })
            }
            Message::Discarded(d) if d.count > 0 => {
                eprintln!(
                    "pyust view: {} event(s) discarded by the tracer in stream {}",
                    d.count, d.stream_name
                );
                Ok(())
            }
            _ => Ok(()),
        }
    };
    let read = crate::read::read(trace, &mut each);
    let flushed = out.flush();
    match read {
        Err(_) if broken_pipe => Ok(()),
        Err(e) => Err(e),
        Ok(stats) => {
            if stats.unresolved > 0 {
                eprintln!(
                    "pyust view: {} event(s) of ids with no definition in the trace (named ?)",
                    stats.unresolved
                );
            }
            if stats.duplicate > 0 {
                eprintln!(
                    "pyust view: {} fast-mode event(s) of processes with readable events too: left out",
                    stats.duplicate
                );
            }
            match flushed {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.to_string()),
                _ => Ok(()),
            }
        }
    }
}
