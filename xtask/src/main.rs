//! `cargo xtask <task>`: pyust's developer tasks (see README.md).
//!
//!   e2e [--local] [--base IMAGE]   record the scenarios, compare with snapshots
//!   ci                             everything CI checks

mod common;
mod e2e;
mod normalize;

use anyhow::{bail, Result};

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  e2e [--local]     record tests/scenarios/*.py under a live session daemon
                    and compare the normalized traces with the snapshots in
                    xtask/src/snapshots (accept changes: cargo insta review)
  ci                everything CI checks: fmt, clippy, cargo test, ruff,
                    pytest, e2e --local
";

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
