//! `cargo xtask pytest`, and the checks of one interpreter that `ci` runs
//! on each: clippy against it, its wheel, ruff, the pytest suites, the e2e
//! snapshots; on the free-threaded build; in the Debian testing container.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::common::{ensure_sessiond, python_env, python_env_from, step};
use crate::{docker, e2e, freethreaded};

/// The free-threaded CPython (built once per machine): clippy, the pytest
/// suites and the e2e snapshots, with the GIL off (`PYTHON_GIL=0`: any
/// module that needs the GIL would fail to import instead of turning it on).
pub fn free_threaded(sh: &Shell, wheels: Option<&Path>) -> Result<()> {
    step(&format!(
        "CPython {}t (free-threaded, built once per machine)",
        freethreaded::VERSION
    ));
    let python = freethreaded::python(sh)?;
    let _gil_off = sh.push_env("PYTHON_GIL", "0");
    check_python(sh, "3.14t (PYTHON_GIL=0)", &python, false, wheels)
}

/// For one interpreter: clippy against it (with the bench-only code too),
/// its wheel (or a release build) into its virtualenv, ruff when `ruff`
/// (once is enough), the pytest suites and the e2e snapshots on this
/// machine.
pub fn check_python(
    sh: &Shell,
    label: &str,
    python: &Path,
    ruff: bool,
    wheels: Option<&Path>,
) -> Result<()> {
    step(&format!(
        "CPython {label}: clippy, {} ({})",
        if wheels.is_some() {
            "its wheel"
        } else {
            "build"
        },
        python.display()
    ));
    for features in [&[][..], &["--features", "bench"][..]] {
        cmd!(
            sh,
            "cargo clippy --quiet -p pyust {features...} -- -D warnings"
        )
        .env("PYO3_PYTHON", python)
        .run()?;
    }
    let venv_python = python_env_from(sh, &python.to_string_lossy(), wheels)?;
    if ruff {
        step("ruff");
        cmd!(sh, "{venv_python} -m ruff check python tests xtask/bench").run()?;
        cmd!(
            sh,
            "{venv_python} -m ruff format --check python tests xtask/bench"
        )
        .run()?;
        step("mypy (python/pyust)");
        cmd!(sh, "{venv_python} -m mypy python/pyust").run()?;
    }
    step(&format!("CPython {label}: pytest"));
    let mut pytest = cmd!(sh, "{venv_python} -m pytest -q tests");
    if REGRTEST_SKIPPED
        .iter()
        .any(|v| label.starts_with(&format!("{v} ")) || label == *v)
    {
        pytest = pytest.env("PYUST_SKIP_REGRTEST", REGRTEST_REASON);
    }
    if !SHARED_ON.iter().any(|v| label.starts_with(v)) {
        pytest = pytest.env("PYUST_SKIP_SHARED", SHARED_REASON);
    }
    pytest.run()?;
    step(&format!("CPython {label}: e2e --local"));
    e2e::E2e {
        local: true,
        python: Some(venv_python),
        base: None,
    }
    .run(sh)
}

/// The CPythons CI tests in a container of Debian testing (their apt
/// packages) whatever the host has.
pub const CONTAINER_PYTHONS: [&str; 2] = ["3.14", "3.15"];

/// CPython's own regression tests under pyust (tests/test_transparency.py,
/// about a minute per interpreter) run in `ci` on the interpreters where
/// pyust's hooking changes — 3.8, 3.11 (the last profile-hook one), 3.12
/// (the first `sys.monitoring` one), 3.13, 3.14t, 3.15 — not on these.
const REGRTEST_SKIPPED: [&str; 4] = ["3.9", "3.10", "3.13", "3.14"];
const REGRTEST_REASON: &str = "cargo xtask ci runs CPython's regression tests under pyust on 3.8, 3.11, 3.12, 3.14t and 3.15 (the oldest, the last profile-hook one, the first sys.monitoring one, the free-threaded one, the newest), to stay within its time budget";

/// The tests of `tests/conftest.py`'s SHARED_MODULES (the readers, the
/// timelines, relay streaming: their subject is not the interpreter) run
/// in `ci` on these: the oldest (the profile hook), the free-threaded
/// one, the newest (`sys.monitoring`, in the container). On the others,
/// tests/test_children.py runs fewer pools per start method.
const SHARED_ON: [&str; 3] = ["3.8", "3.14t", "3.15"];
const SHARED_REASON: &str = "cargo xtask ci runs the reader, timeline, relay and record-lifetime tests on CPython 3.8, 3.14t and 3.15 (they do not depend on the interpreter), to stay within its time budget";

/// `clippy`, the pytest suites and the e2e snapshots (`e2e --local`) for
/// each of `CONTAINER_PYTHONS`, in a container of the dev image on `base`,
/// with its own session daemon. The
/// build and the virtualenvs go to the Docker volume pyust-target-<suite>,
/// crates to pyust-cargo-registry.
pub fn container_pytests(sh: &Shell, base: &str) -> Result<()> {
    let status = container_pytests_command(sh, base)?
        .status()
        .context("running docker")?;
    if !status.success() {
        bail!("the pytest suites in the container failed ({status})");
    }
    Ok(())
}

/// The `docker run` of [`container_pytests`] (its image built first).
pub fn container_pytests_command(sh: &Shell, base: &str) -> Result<std::process::Command> {
    let suite = base.rsplit(':').next().unwrap_or("container");
    let tag = format!("pyust-dev:{suite}");
    let mut packages = vec!["rust-clippy"];
    let dev_packages: Vec<String> = CONTAINER_PYTHONS
        .iter()
        .flat_map(|v| [format!("python{v}-dev"), format!("python{v}-venv")])
        .collect();
    packages.extend(dev_packages.iter().map(String::as_str));
    docker::build_with(sh, base, "dev", &tag, &packages)?;
    let mount = format!("{}:/src", sh.current_dir().display());
    // Docker volumes outlive the clone: builds and virtualenvs are reused
    // by the next run on this machine.
    let target_volume = format!("pyust-target-{suite}:/target");
    let target = "CARGO_TARGET_DIR=/target";
    let versions = CONTAINER_PYTHONS.join(" ");
    let script = format!(
        "set -e; lttng-sessiond --daemonize; for v in {versions}; do \
         echo; echo \"==> CPython $v (container): clippy, pytest\"; \
         PYO3_PYTHON=$(command -v python$v) cargo clippy --quiet -p pyust -- -D warnings; \
         PYO3_PYTHON=$(command -v python$v) cargo clippy --quiet -p pyust --features bench -- -D warnings; \
         if [ $v = 3.14 ]; then export PYUST_SKIP_REGRTEST=\"{REGRTEST_REASON}\" PYUST_SKIP_SHARED=\"{SHARED_REASON}\"; else unset PYUST_SKIP_REGRTEST PYUST_SKIP_SHARED; fi; \
         cargo xtask pytest --python python$v; \
         echo \"==> CPython $v (container): e2e --local\"; \
         cargo xtask e2e --local --python /target/venv-$v/bin/python; done"
    );
    let mut docker = std::process::Command::new("docker");
    docker.args([
        "run",
        "--rm",
        "--network",
        "host",
        "--shm-size=1g",
        // `pyust attach` (sys.remote_exec) reads and writes another
        // process's memory.
        "--cap-add=SYS_PTRACE",
        "-v",
        &mount,
        "-v",
        &target_volume,
        "-v",
        "pyust-cargo-registry:/root/.cargo/registry",
        "-w",
        "/src",
        "-e",
        target,
        "-e",
        "CI=true",
        &tag,
        "bash",
        "-c",
        &script,
    ]);
    Ok(docker)
}

/// `cargo xtask pytest [--python PYTHON] [-- ARGS]`: the suites (or pytest
/// with ARGS) in a virtualenv of `python` with pyust built in.
pub fn run(sh: &Shell, python: &str, args: &[std::ffi::OsString]) -> Result<()> {
    ensure_sessiond(sh)?;
    let venv_python = python_env(sh, python)?;
    let default = [std::ffi::OsString::from("tests")];
    let args = if args.is_empty() { &default[..] } else { args };
    cmd!(sh, "{venv_python} -m pytest -q {args...}").run()?;
    Ok(())
}
