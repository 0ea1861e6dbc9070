//! `cargo xtask ci`: every check CI runs, strung together in order of
//! cost, from formatting to the containers. The only module that calls
//! the other tasks.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::common::{ensure_sessiond, python_env_from, pythons, step, target_dir};
use crate::pytest::{check_python, container_pytests_command, free_threaded, CONTAINER_PYTHONS};
use crate::{devcontainer, docker, e2e, layout, perfetto_ui, setup, wheels};

/// `cargo xtask ci`: every check, in order of cost.
pub fn ci(sh: &Shell) -> Result<()> {
    setup::preflight(sh)?;
    step("cargo fmt");
    cmd!(sh, "cargo fmt --all -- --check").run()?;
    step("cargo clippy");
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --quiet -- -D warnings"
    )
    .run()?;
    step("cargo test (xtask: normalizer; pyust: report formats, the readers fuzzed)");
    cmd!(sh, "cargo test --quiet -p xtask").run()?;
    // 4000 corrupted traces per fuzz target: about 8 s here.
    cmd!(sh, "cargo test --quiet -p pyust --lib")
        .env("PROPTEST_CASES", "4000")
        .run()?;
    layout::check(sh)?;

    // The wheels first: each CPython's tests below run on its wheel, as
    // `pip install` gives it to users.
    let wheels = wheels::build(sh)?;

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
    perfetto_ui::run(sh, &newest.to_string_lossy())?;
    free_threaded(sh, Some(&wheels))?;

    // The wheels, installed by pip where no compiler is (they build base
    // images for bookworm, trixie and forky).
    docker::ensure_daemon(sh)?;
    wheels::check_installs(sh, &wheels)?;

    // The image (built from source in its build stage) on Debian stable
    // (CPython 3.13, LTTng 2.13): the e2e in a container of it. On Debian
    // testing the wheels' check above ran the same scenarios (3.14, 3.15,
    // LTTng 2.16), and the pytest suites run below.
    step("e2e in the trixie container (the pyust image)");
    let base = docker::base_image(sh, docker::DEFAULT_SUITE, false)?;
    e2e::E2e {
        local: false,
        python: None,
        base: Some(base.clone()),
    }
    .run(sh)?;
    let testing = docker::base_image(sh, docker::TESTING_SUITE, false)?;
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
    let devcontainer = devcontainer::check(sh, &base);
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
