//! Turns `lttng view` / `babeltrace2` text into a stable form for snapshots.
//!
//! - run-dependent values become `[UPPER]` placeholders: timestamps, deltas,
//!   host name, cpu ids and the process name; vpid/vtid are renumbered in
//!   order of appearance (`[PID1]`, `[TID2]`, ...);
//! - absolute paths are reduced to their file name;
//! - only the scenario's own activity is kept: calls of code in the
//!   scenario file, and the C calls and exceptions of those frames (what
//!   the standard library does inside differs between Python versions);
//! - events are grouped by thread, in order of each thread's first event
//!   (threads interleave differently from run to run).

use std::collections::HashMap;

use regex::Regex;

/// One event line, split.
struct Event<'a> {
    name: &'a str,
    /// `{ ... }` groups after the event name, as printed.
    rest: &'a str,
}

fn split_line<'a>(re: &Regex, line: &'a str) -> Option<Event<'a>> {
    let caps = re.captures(line)?;
    Some(Event {
        name: caps.name("event")?.as_str(),
        rest: caps.name("rest")?.as_str(),
    })
}

fn field<'a>(rest: &'a str, name: &str) -> Option<&'a str> {
    let start = rest.find(&format!("{name} = "))? + name.len() + 3;
    let tail = &rest[start..];
    if let Some(quoted) = tail.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => return Some(&quoted[..i]),
                _ => escaped = false,
            }
        }
        None
    } else {
        let end = tail.find([',', ' ', '}']).unwrap_or(tail.len());
        Some(&tail[..end])
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Renumbers ids in order of first appearance.
#[derive(Default)]
struct Renumber(HashMap<String, usize>);

impl Renumber {
    fn get(&mut self, id: &str) -> usize {
        let next = self.0.len() + 1;
        *self.0.entry(id.to_owned()).or_insert(next)
    }
}

/// Normalizes a trace's text; `scenario` is the scenario's file name
/// (`foo.py`): only its frames' events are kept.
pub fn normalize(text: &str, scenario: &str) -> String {
    let line_re = Regex::new(
        r"^\[(?P<time>[^\]]+)\] \((?P<delta>[^)]+)\) (?P<host>\S+) (?P<event>[A-Za-z0-9_]+:[A-Za-z0-9_]+): (?P<rest>.*)$",
    )
    .expect("valid regex");
    let cpu_re = Regex::new(r"cpu_id = \d+").expect("valid regex");
    let pid_re = Regex::new(r"\bvpid = (\d+)").expect("valid regex");
    let tid_re = Regex::new(r"\bvtid = (\d+)").expect("valid regex");
    let procname_re = Regex::new(r#"procname = "(?:[^"\\]|\\.)*""#).expect("valid regex");
    let path_re = Regex::new(r#""/(?:[^"\\]|\\.)*/((?:[^"\\/]|\\.)+)""#).expect("valid regex");

    // Per thread: is each open Python frame / C call the scenario's own?
    let mut frames: HashMap<String, Vec<bool>> = HashMap::new();
    let mut c_calls: HashMap<String, Vec<bool>> = HashMap::new();
    let mut threads: Vec<String> = Vec::new();
    let mut kept: HashMap<String, Vec<&str>> = HashMap::new();

    for line in text.lines() {
        let Some(event) = split_line(&line_re, line) else {
            continue;
        };
        if !event.name.starts_with("python:") {
            continue;
        }
        let thread = format!(
            "{}/{}",
            field(event.rest, "vpid").unwrap_or(""),
            field(event.rest, "vtid").unwrap_or("")
        );
        let stack = frames.entry(thread.clone()).or_default();
        let inside = stack.last().copied().unwrap_or(false);
        let keep = match event.name {
            "python:call" => {
                let own = field(event.rest, "co_filename").map(file_name) == Some(scenario);
                stack.push(own);
                own
            }
            "python:return" => stack.pop().unwrap_or(false),
            "python:c_call" => {
                c_calls.entry(thread.clone()).or_default().push(inside);
                inside
            }
            "python:c_return" => c_calls
                .get_mut(&thread)
                .and_then(|s| s.pop())
                .unwrap_or(false),
            "python:exception" => inside,
            _ => false,
        };
        if keep {
            if !kept.contains_key(&thread) {
                threads.push(thread.clone());
            }
            kept.entry(thread).or_default().push(line);
        }
    }

    let mut pids = Renumber::default();
    let mut tids = Renumber::default();
    let mut out = String::new();
    for thread in &threads {
        for line in &kept[thread] {
            let event = split_line(&line_re, line).expect("kept lines parse");
            let rest = cpu_re.replace_all(event.rest, "cpu_id = [CPU]");
            let rest = pid_re.replace_all(&rest, |c: &regex::Captures<'_>| {
                format!("vpid = [PID{}]", pids.get(&c[1]))
            });
            let rest = tid_re.replace_all(&rest, |c: &regex::Captures<'_>| {
                format!("vtid = [TID{}]", tids.get(&c[1]))
            });
            let rest = procname_re.replace_all(&rest, "procname = \"[PROCNAME]\"");
            let rest = path_re.replace_all(&rest, "\"$1\"");
            out.push_str(&format!(
                "[TIME] ([DELTA]) [HOST] {}: {}\n",
                event.name, rest
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = r#"[08:45:54.519617165] (+?.?????????) vm python:call: { cpu_id = 1 }, { vpid = 5972, vtid = 5972, procname = "python3.11" }, { co_name = "<module>", co_qualname = "<module>", module = "__main__", co_filename = "/work/main/tests/scenarios/foo.py", co_firstlineno = 1 }
[08:45:54.519627961] (+0.000010796) vm python:call: { cpu_id = 0 }, { vpid = 5972, vtid = 5972, procname = "python3.11" }, { co_name = "start", co_qualname = "Thread.start", module = "threading", co_filename = "/usr/lib/python3.11/threading.py", co_firstlineno = 945 }
[08:45:54.519627962] (+0.000000001) vm python:c_call: { cpu_id = 0 }, { vpid = 5972, vtid = 5972, procname = "python3.11" }, { co_name = "start_new_thread", co_qualname = "_thread.start_new_thread" }
[08:45:54.519627963] (+0.000000001) vm python:call: { cpu_id = 1 }, { vpid = 5972, vtid = 5990, procname = "python3.11" }, { co_name = "worker", co_qualname = "worker", module = "__main__", co_filename = "/work/main/tests/scenarios/foo.py", co_firstlineno = 4 }
[08:45:54.519627964] (+0.000000001) vm python:c_return: { cpu_id = 0 }, { vpid = 5972, vtid = 5972, procname = "python3.11" }, { }
[08:45:54.519627965] (+0.000000001) vm python:exception: { cpu_id = 1 }, { vpid = 5972, vtid = 5990, procname = "python3.11" }, { exc_type = "ValueError", co_qualname = "worker", lineno = 5 }
[08:45:54.519627966] (+0.000000001) vm python:return: { cpu_id = 1 }, { vpid = 5972, vtid = 5990, procname = "python3.11" }, { }
[08:45:54.519627967] (+0.000000001) vm python:return: { cpu_id = 0 }, { vpid = 5972, vtid = 5972, procname = "python3.11" }, { }
[08:45:54.519627968] (+0.000000001) vm python:c_call: { cpu_id = 0 }, { vpid = 5972, vtid = 5972, procname = "python3.11" }, { co_name = "len", co_qualname = "builtins.len" }
[08:45:54.519627969] (+0.000000001) vm python:c_return: { cpu_id = 0 }, { vpid = 5972, vtid = 5972, procname = "python3.11" }, { }
[08:45:54.519627970] (+0.000000001) vm python:return: { cpu_id = 0 }, { vpid = 5972, vtid = 5972, procname = "python3.11" }, { }
"#;

    #[test]
    fn placeholders_paths_and_scenario_frames() {
        let out = normalize(RAW, "foo.py");
        let expected = r#"[TIME] ([DELTA]) [HOST] python:call: { cpu_id = [CPU] }, { vpid = [PID1], vtid = [TID1], procname = "[PROCNAME]" }, { co_name = "<module>", co_qualname = "<module>", module = "__main__", co_filename = "foo.py", co_firstlineno = 1 }
[TIME] ([DELTA]) [HOST] python:c_call: { cpu_id = [CPU] }, { vpid = [PID1], vtid = [TID1], procname = "[PROCNAME]" }, { co_name = "len", co_qualname = "builtins.len" }
[TIME] ([DELTA]) [HOST] python:c_return: { cpu_id = [CPU] }, { vpid = [PID1], vtid = [TID1], procname = "[PROCNAME]" }, { }
[TIME] ([DELTA]) [HOST] python:return: { cpu_id = [CPU] }, { vpid = [PID1], vtid = [TID1], procname = "[PROCNAME]" }, { }
[TIME] ([DELTA]) [HOST] python:call: { cpu_id = [CPU] }, { vpid = [PID1], vtid = [TID2], procname = "[PROCNAME]" }, { co_name = "worker", co_qualname = "worker", module = "__main__", co_filename = "foo.py", co_firstlineno = 4 }
[TIME] ([DELTA]) [HOST] python:exception: { cpu_id = [CPU] }, { vpid = [PID1], vtid = [TID2], procname = "[PROCNAME]" }, { exc_type = "ValueError", co_qualname = "worker", lineno = 5 }
[TIME] ([DELTA]) [HOST] python:return: { cpu_id = [CPU] }, { vpid = [PID1], vtid = [TID2], procname = "[PROCNAME]" }, { }
"#;
        assert_eq!(out, expected);
    }

    #[test]
    fn other_lines_and_providers_are_dropped() {
        let text = "some warning\n[08:45:54.519617165] (+?.?????????) vm lttng_ust_statedump:start: { cpu_id = 1 }, { }\n";
        assert_eq!(normalize(text, "foo.py"), "");
    }

    #[test]
    fn quoted_fields_with_escapes() {
        let rest = r#"{ co_name = "a\"b", co_firstlineno = 12 }"#;
        assert_eq!(field(rest, "co_name"), Some(r#"a\"b"#));
        assert_eq!(field(rest, "co_firstlineno"), Some("12"));
        assert_eq!(field(rest, "missing"), None);
    }

    #[test]
    fn without_contexts_everything_is_one_thread() {
        let text = "[08:45:54.519617165] (+?.?????????) host python:call: { cpu_id = 3 }, { co_name = \"f\", co_qualname = \"f\", module = \"m\", co_filename = \"/a/b/s.py\", co_firstlineno = 1 }\n[08:45:54.519617166] (+0.000000001) host python:return: { cpu_id = 3 }, { }\n";
        assert_eq!(
            normalize(text, "s.py"),
            "[TIME] ([DELTA]) [HOST] python:call: { cpu_id = [CPU] }, { co_name = \"f\", co_qualname = \"f\", module = \"m\", co_filename = \"s.py\", co_firstlineno = 1 }\n[TIME] ([DELTA]) [HOST] python:return: { cpu_id = [CPU] }, { }\n"
        );
    }
}
