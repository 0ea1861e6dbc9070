//! The benchmarks that are Python scripts of xtask/bench/ run in a
//! virtualenv with pyust built in: `bench-report`, `bench-relay` (a
//! program of fib(N)) and `bench-real` (a real program's test suite).

use std::path::Path;

use anyhow::Result;
use xshell::{cmd, Shell};

use crate::common::{ensure_sessiond, python_env, python_version, target_dir};
use crate::freethreaded;

/// `bench-report` and `bench-relay`: `xtask/bench/SCRIPT WORKDIR ROUNDS
/// FIB_N` in a virtualenv of `python` with pyust built in, under a session
/// daemon.
pub fn fib_bench(
    sh: &Shell,
    task: &str,
    script: &str,
    python: &str,
    fib: u32,
    rounds: u32,
) -> Result<()> {
    ensure_sessiond(sh)?;
    let venv_python = python_env(sh, python)?;
    let workdir = target_dir(sh).join(task.trim_start_matches("bench-").to_owned() + "-bench");
    let script = Path::new("xtask/bench").join(script);
    let (rounds, fib) = (rounds.to_string(), fib.to_string());
    cmd!(sh, "{venv_python} {script} {workdir} {rounds} {fib}").run()?;
    Ok(())
}

/// `bench-real`: the more-itertools suite under each tracer
/// (xtask/bench/real_bench.py); `unbounded`: also `record --max-size 0`.
pub fn real(sh: &Shell, python: &str, unbounded: bool) -> Result<()> {
    ensure_sessiond(sh)?;
    let venv_python = python_env(sh, python)?;
    cmd!(
        sh,
        "{venv_python} -m pip install --quiet --disable-pip-version-check viztracer"
    )
    .run()?;
    // trace0 (3.13+), the fastest exact tracer known, as the anchor.
    let minor = python_version(sh, &venv_python.to_string_lossy())?;
    if ["3.13", "3.14", "3.15"].contains(&minor.as_str()) {
        cmd!(
            sh,
            "{venv_python} -m pip install --quiet --disable-pip-version-check trace0==0.1.16"
        )
        .run()?;
    }
    let workdir = target_dir(sh).join("real-bench");
    let cache = freethreaded::cache_dir().join("real-bench");
    let flag = if unbounded {
        None
    } else {
        Some("--no-unbounded")
    };
    cmd!(
        sh,
        "{venv_python} xtask/bench/real_bench.py {workdir} {cache} {flag...}"
    )
    .run()?;
    Ok(())
}
