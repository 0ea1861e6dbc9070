//! `cargo xtask e2e`: records every scenario under tests/scenarios/ with
//! `pyust record --view` under a live session daemon, normalizes the text
//! (see normalize.rs) and compares it with the insta snapshot of the same
//! name in xtask/src/snapshots/.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::common;
use crate::normalize::normalize;

pub struct E2e {
    pub local: bool,
    /// The interpreter that has pyust installed (local runs).
    pub python: Option<PathBuf>,
}

impl E2e {
    pub fn parse(args: &[String]) -> Result<E2e> {
        let mut e2e = E2e {
            local: false,
            python: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--local" => e2e.local = true,
                "--python" => {
                    e2e.python = Some(args.next().context("--python needs a path")?.into())
                }
                other => bail!("unknown e2e option {other:?}"),
            }
        }
        if !e2e.local {
            bail!("only `cargo xtask e2e --local` exists so far");
        }
        Ok(e2e)
    }

    pub fn run(self, sh: &Shell) -> Result<()> {
        common::ensure_sessiond(sh)?;
        let python = match self.python {
            Some(python) => python,
            None => common::python_env(sh, "python3")?,
        };
        let traces = sh.current_dir().join("target").join("e2e-traces");
        let mut failed = Vec::new();
        for scenario in scenarios(sh)? {
            let name = stem(&scenario);
            let out_dir = traces.join(&name);
            if out_dir.exists() {
                sh.remove_path(&out_dir)?;
            }
            let text = cmd!(
                sh,
                "{python} -m pyust record -o {out_dir} --view {scenario}"
            )
            .quiet()
            .ignore_stderr()
            .read()
            .with_context(|| format!("recording {name}"))?;
            let normalized = normalize(&text, &format!("{name}.py"));
            if check_snapshot(&name, &normalized).is_err() {
                failed.push(name.clone());
            } else {
                eprintln!("e2e: {name}: matches its snapshot");
            }
        }
        if !failed.is_empty() {
            bail!(
                "e2e: {} scenario(s) differ from their snapshots: {} (review: cargo insta review)",
                failed.len(),
                failed.join(", ")
            );
        }
        Ok(())
    }
}

pub fn scenarios(sh: &Shell) -> Result<Vec<PathBuf>> {
    let dir = sh.current_dir().join("tests").join("scenarios");
    let mut files: Vec<PathBuf> = sh
        .read_dir(&dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    Ok(files)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Compares with the snapshot `name`; insta prints the diff and, outside
/// CI, writes a `.snap.new` for `cargo insta review`.
pub fn check_snapshot(name: &str, normalized: &str) -> std::thread::Result<()> {
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join("snapshots");
    // insta has printed the diff by the time it panics: say only why.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| eprintln!("e2e: {info}")));
    let result = std::panic::catch_unwind(|| {
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(snapshots);
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.bind(|| insta::assert_snapshot!(name, normalized));
    });
    std::panic::set_hook(default_hook);
    result
}
