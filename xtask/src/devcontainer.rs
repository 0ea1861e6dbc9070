//! The devcontainer check: the real devcontainer CLI brings up
//! .devcontainer/devcontainer.json, and `cargo xtask e2e --local` and the
//! API, event and command-line suites pass inside it (the distribution's
//! CPython, e.g. 3.13 on Debian trixie; `ci` runs every suite on the same
//! version outside).

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::common::{have, in_ci};
use crate::docker;

/// What a developer runs first: the API, the events, the command line.
const DEVCONTAINER_SUITES: [&str; 3] = [
    "tests/test_api.py",
    "tests/test_events.py",
    "tests/test_cli.py",
];

pub fn check(sh: &Shell, base: &str) -> Result<()> {
    docker::ensure_daemon(sh)?;
    if !have("devcontainer") {
        if !in_ci() {
            bail!("the devcontainer CLI is missing: npm install -g @devcontainers/cli");
        }
        eprintln!("xtask: npm install -g @devcontainers/cli");
        cmd!(sh, "npm install -g --silent @devcontainers/cli")
            .quiet()
            .run()?;
    }
    let folder = sh.current_dir();
    let label = format!("devcontainer.local_folder={}", folder.display());
    let ca = docker::extra_ca_certs();
    let up = cmd!(
        sh,
        "devcontainer up --workspace-folder {folder} --remove-existing-container --log-level info"
    )
    .env("PYUST_BASE_IMAGE", base)
    .env("PYUST_EXTRA_CA_CERTS", ca)
    .quiet()
    .ignore_stdout()
    .run()
    .context("devcontainer up");
    let result = up
        .and_then(|()| {
            cmd!(
                sh,
                "devcontainer exec --workspace-folder {folder} cargo xtask e2e --local"
            )
            .run()
            .context("cargo xtask e2e --local inside the devcontainer")
        })
        .and_then(|()| {
            cmd!(
                sh,
                "devcontainer exec --workspace-folder {folder} cargo xtask pytest -- {DEVCONTAINER_SUITES...}"
            )
            .run()
            .context("the pytest suites inside the devcontainer")
        });
    // Remove the container whatever happened.
    if let Ok(ids) = cmd!(sh, "docker ps -aq --filter label={label}")
        .quiet()
        .read()
    {
        for id in ids.split_whitespace() {
            let _ = cmd!(sh, "docker rm -f {id}").quiet().ignore_stdout().run();
        }
    }
    result
}
