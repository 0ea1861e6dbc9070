//! `cargo xtask setup` and `ci`'s preflight: everything `cargo xtask ci`
//! needs beyond Rust and a CPython, listed at once with what installs it,
//! then installed in one go — apt packages, the Docker daemon, the
//! devcontainer CLI (npm). CI (`CI=true`) installs without asking; a
//! person at a terminal is asked once; anywhere else the list is the
//! error.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::common::{dpkg_installed, have, in_ci, step};
use crate::{docker, freethreaded};

/// One missing piece: what it is for, and how it comes.
struct Missing {
    what: String,
    how: How,
}

enum How {
    Apt(Vec<&'static str>),
    Npm(&'static str),
    /// Start `dockerd` (installed by the apt part when needed).
    Daemon,
}

/// What this machine lacks for `cargo xtask ci`.
fn missing(sh: &Shell) -> Vec<Missing> {
    let mut out = Vec::new();
    let mut apt = |what: &str, packages: &[&'static str]| {
        let absent: Vec<&'static str> = packages
            .iter()
            .copied()
            .filter(|p| !dpkg_installed(sh, p))
            .collect();
        if !absent.is_empty() {
            out.push(Missing {
                what: what.to_owned(),
                how: How::Apt(absent),
            });
        }
    };
    apt(
        "LTTng (session daemon, UST headers, babeltrace2) and pkg-config",
        &[
            "lttng-tools",
            "liblttng-ust-dev",
            "babeltrace2",
            "pkg-config",
        ],
    );
    apt(
        "debootstrap (the local Debian base images)",
        &["debootstrap"],
    );
    if !have("dockerd") && !std::path::Path::new("/usr/sbin/dockerd").exists() {
        apt(
            "a Docker daemon (this docker may be a client only)",
            &["docker.io"],
        );
    }
    let compose = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !compose(&["docker", "compose", "version"]) && !have("docker-compose") {
        apt("docker compose (the fleet)", &["docker-compose"]);
    }
    apt("Chromium (the Perfetto UI check)", &["chromium"]);
    if !have("npm") {
        apt(
            "Node.js and npm (the devcontainer CLI, puppeteer)",
            &["nodejs", "npm"],
        );
    }
    if freethreaded::built().is_none() {
        apt(
            "the free-threaded CPython's build dependencies (built once per machine)",
            &freethreaded::BUILD_DEPS,
        );
    }
    if !have("devcontainer") {
        out.push(Missing {
            what: "the devcontainer CLI".to_owned(),
            how: How::Npm("@devcontainers/cli"),
        });
    }
    if !docker::daemon_answers(sh) {
        out.push(Missing {
            what: "a running Docker daemon".to_owned(),
            how: How::Daemon,
        });
    }
    out
}

fn describe(m: &Missing) -> String {
    let how = match &m.how {
        How::Apt(p) => format!("apt-get install {}", p.join(" ")),
        How::Npm(p) => format!("npm install -g {p}"),
        How::Daemon => "dockerd in the background".to_owned(),
    };
    format!("  - {}: {how}", m.what)
}

/// Installs what `missing` lists: the apt packages in one call, then npm,
/// then the daemon.
fn install(sh: &Shell, missing: &[Missing]) -> Result<()> {
    let apt: Vec<&str> = missing
        .iter()
        .filter_map(|m| match &m.how {
            How::Apt(p) => Some(p.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    if !apt.is_empty() {
        docker::apt_install(sh, &apt)?;
    }
    for m in missing {
        if let How::Npm(package) = m.how {
            eprintln!("xtask: npm install -g {package}");
            cmd!(sh, "npm install -g --silent {package}")
                .run()
                .with_context(|| format!("installing {package} with npm"))?;
        }
    }
    if missing.iter().any(|m| matches!(m.how, How::Daemon)) {
        docker::start_daemon(sh)?;
    }
    Ok(())
}

/// `cargo xtask setup [--check]`.
pub fn run(sh: &Shell, check_only: bool) -> Result<()> {
    let missing = missing(sh);
    if missing.is_empty() {
        eprintln!("setup: nothing missing: `cargo xtask ci` has all it needs");
        return Ok(());
    }
    eprintln!("setup: `cargo xtask ci` needs, and this machine lacks:");
    for m in &missing {
        eprintln!("{}", describe(m));
    }
    if check_only {
        bail!(
            "{} missing (`cargo xtask setup` installs them)",
            missing.len()
        );
    }
    install(sh, &missing)?;
    let left = self::missing(sh);
    if !left.is_empty() {
        let list: Vec<String> = left.iter().map(describe).collect();
        bail!("still missing after installing:\n{}", list.join("\n"));
    }
    eprintln!("setup: done");
    Ok(())
}

/// `ci`'s first step: everything missing at once; installed under CI=true,
/// or after one question at a terminal; otherwise the list and the command.
pub fn preflight(sh: &Shell) -> Result<()> {
    step("preflight: what cargo xtask ci needs");
    let missing = missing(sh);
    if missing.is_empty() {
        eprintln!("preflight: nothing missing");
        return Ok(());
    }
    eprintln!("preflight: this machine lacks:");
    for m in &missing {
        eprintln!("{}", describe(m));
    }
    if !in_ci() {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            bail!(
                "{} missing: run `cargo xtask setup` (it installs them all), then `cargo xtask ci` again",
                missing.len()
            );
        }
        eprint!("Install them now (what `cargo xtask setup` does)? [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not installed: `cargo xtask setup` installs them");
        }
    }
    install(sh, &missing)
}
