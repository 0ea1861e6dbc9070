//! `cargo xtask <task>`: pyust's developer tasks (`cargo xtask --help`,
//! docs/development.md).
//!
//! Layers, each importing only those below it: `main` (the command line,
//! `flags`) → `ci` (every check strung together) → the tasks, one module
//! each (`demo`, `e2e`, `bench`, `pybench`, `pytest`, `perfetto_ui`,
//! `wheels`, `fleet`, `setup`, `layout`) → the helpers (`docker`,
//! `freethreaded`, `compose`, `normalize`, `devcontainer`) → `common`, a
//! leaf.

mod bench;
mod ci;
mod common;
mod compose;
mod demo;
mod devcontainer;
mod docker;
mod e2e;
mod flags;
mod fleet;
mod freethreaded;
mod layout;
mod normalize;
mod perfetto_ui;
mod pybench;
mod pytest;
mod setup;
mod wheels;

use anyhow::{bail, Result};

use flags::XtaskCmd;

fn main() {
    let flags = flags::Xtask::from_env_or_exit();
    if let Err(err) = run(flags) {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run(flags: flags::Xtask) -> Result<()> {
    let sh = common::shell()?;
    let sh = &sh;
    let python = |p: Option<String>| p.unwrap_or_else(|| "python3".to_owned());
    match flags.subcommand {
        XtaskCmd::Demo(f) => demo::run(sh, f.script.as_ref().and_then(|s| s.to_str())),
        XtaskCmd::E2e(f) => e2e::E2e {
            local: f.local,
            python: f.python,
            base: f.base,
        }
        .run(sh),
        XtaskCmd::Bench(f) => bench::Bench {
            versions: f.python,
            rounds: f.rounds.unwrap_or(5) as usize,
            callgrind: !f.no_callgrind,
        }
        .run(sh),
        XtaskCmd::BenchReport(f) => pybench::fib_bench(
            sh,
            "bench-report",
            "report_bench.py",
            &python(f.python),
            f.fib.unwrap_or(32),
            f.rounds.unwrap_or(3),
        ),
        XtaskCmd::BenchRelay(f) => pybench::fib_bench(
            sh,
            "bench-relay",
            "relay_bench.py",
            &python(f.python),
            f.fib.unwrap_or(25),
            f.rounds.unwrap_or(3),
        ),
        XtaskCmd::BenchReal(f) => pybench::real(sh, &python(f.python), !f.no_unbounded),
        XtaskCmd::Pytest(f) => match (f.container, f.free_threaded) {
            (true, false) if f.python.is_none() && f.args.is_empty() => {
                let base = docker::base_image(sh, docker::TESTING_SUITE, false)?;
                pytest::container_pytests(sh, &base)
            }
            (false, true) if f.python.is_none() && f.args.is_empty() => {
                common::ensure_sessiond(sh)?;
                pytest::free_threaded(sh, None)
            }
            (false, false) => pytest::run(sh, &python(f.python), &f.args),
            _ => bail!(
                "usage: cargo xtask pytest [--python PYTHON] [-- PYTEST_ARGS...] | --container | --free-threaded"
            ),
        },
        XtaskCmd::PerfettoUi(f) => perfetto_ui::run(sh, &python(f.python)),
        XtaskCmd::Wheels(f) => {
            let dir = wheels::build(sh)?;
            if f.check {
                docker::ensure_daemon(sh)?;
                wheels::check_installs(sh, &dir)?;
                common::ensure_sessiond(sh)?;
                wheels::free_threaded(sh, &dir)?;
            }
            Ok(())
        }
        XtaskCmd::Fleet(f) => {
            let apps = f.apps.unwrap_or(fleet::MAX_APPS);
            if !(1..=fleet::MAX_APPS).contains(&apps) {
                bail!(
                    "fleet: APPS is 1 to {}, the app containers compose.yaml describes \
                     (add services there for more)",
                    fleet::MAX_APPS
                );
            }
            fleet::Fleet {
                apps,
                docker_run: f.docker_run,
                python: f.python,
            }
            .run(sh)
        }
        XtaskCmd::BaseImage(f) => {
            let suite = f.suite.unwrap_or_else(|| docker::DEFAULT_SUITE.to_owned());
            docker::base_image(sh, &suite, f.force).map(drop)
        }
        XtaskCmd::Setup(f) => setup::run(sh, f.check),
        XtaskCmd::Layout(_) => layout::check(sh),
        XtaskCmd::Ci(_) => ci::ci(sh),
    }
}
