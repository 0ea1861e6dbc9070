//! `cargo xtask e2e`: records every scenario under tests/scenarios/ with
//! `pyust record --view` under a live session daemon — in a container of
//! the pyust image (default), or on this machine (`--local`) — normalizes
//! the text (see normalize.rs) and compares it with the insta snapshot of
//! the same name in xtask/src/snapshots/. Both runs share the snapshots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::normalize::normalize;
use crate::{common, docker};

pub struct E2e {
    pub local: bool,
    /// The interpreter that has pyust installed (local runs).
    pub python: Option<PathBuf>,
    /// BASE_IMAGE of the image (container runs).
    pub base: Option<String>,
}

impl E2e {
    pub fn run(self, sh: &Shell) -> Result<()> {
        type Recorder<'a> = Box<dyn Fn(&Path, &str) -> Result<String> + 'a>;
        let record: Recorder<'_> = if self.local {
            common::ensure_sessiond(sh)?;
            let python = match self.python {
                Some(python) => python,
                None => common::python_env(sh, "python3")?,
            };
            let traces = crate::common::target_dir(sh).join("e2e-traces");
            Box::new(move |scenario: &Path, name: &str| {
                let out_dir = traces.join(name);
                if out_dir.exists() {
                    sh.remove_path(&out_dir)?;
                }
                Ok(cmd!(
                    sh,
                    "{python} -m pyust record -o {out_dir} --view {scenario}"
                )
                .quiet()
                .ignore_stderr()
                .read()?)
            })
        } else {
            docker::ensure_daemon(sh)?;
            let base = self.base.unwrap_or_else(|| docker::DEFAULT_BASE.to_owned());
            if !docker::available(sh, &base) {
                bail!(
                    "base image {base} cannot be pulled here; build a local one with \
                     `cargo xtask base-image` and pass `--base {}`",
                    docker::local_base(docker::DEFAULT_SUITE)
                );
            }
            let tag = format!(
                "pyust-e2e:{}",
                base.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "-")
            );
            docker::build(sh, &base, "runtime", &tag)?;
            check_failing_script(sh, &tag)?;
            // The image ships the scenarios in its working folder.
            Box::new(move |_scenario: &Path, name: &str| {
                let file = format!("{name}.py");
                Ok(cmd!(sh, "docker run --rm {tag} {file}")
                    .quiet()
                    .ignore_stderr()
                    .read()?)
            })
        };
        let mut failed = Vec::new();
        for scenario in scenarios(sh)? {
            let name = stem(&scenario);
            let text = record(&scenario, &name).with_context(|| format!("recording {name}"))?;
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

/// A user's failing script in a mounted folder, run as the calling user:
/// its exit status comes back, its trace is still printed, and the trace
/// folder is left in the mounted folder, owned by that user.
fn check_failing_script(sh: &Shell, tag: &str) -> Result<()> {
    let dir = sh.create_temp_dir()?;
    let work = dir.path();
    std::fs::write(
        work.join("fails.py"),
        "import sys\n\ndef main():\n    sys.exit(3)\n\nmain()\n",
    )?;
    let uid = cmd!(sh, "id -u").quiet().read()?;
    let gid = cmd!(sh, "id -g").quiet().read()?;
    // A user other than root when we are root: the mount must suit it.
    let (uid, gid) = if uid == "0" {
        cmd!(sh, "chown 4321:4321 {work}").quiet().run()?;
        ("4321".to_owned(), "4321".to_owned())
    } else {
        (uid, gid)
    };
    let mount = format!("{}:/work", work.display());
    let user = format!("{uid}:{gid}");
    let out = std::process::Command::new("docker")
        .args([
            "run", "--rm", "-v", &mount, "--user", &user, tag, "fails.py",
        ])
        .output()
        .context("docker run")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let status = out.status.code();
    if status != Some(3) {
        bail!("e2e: a script exiting with 3 gave status {status:?} in the container");
    }
    if !text.contains("exc_type = \"SystemExit\"") || !text.contains("co_name = \"main\"") {
        bail!("e2e: the failing script's trace was not printed:\n{text}");
    }
    let traces: Vec<_> = std::fs::read_dir(work.join("pyust-traces"))
        .context("no pyust-traces folder in the mounted folder")?
        .flatten()
        .collect();
    let owner = cmd!(sh, "stat -c %u:%g {work}/pyust-traces")
        .quiet()
        .read()?;
    if traces.len() != 1 || owner != user {
        bail!(
            "e2e: trace folder in the mount: {} entries, owner {owner} (want 1, {user})",
            traces.len()
        );
    }
    eprintln!(
        "e2e: a failing user script (mounted, --user {user}): status 3, trace printed and kept"
    );

    // `pyust report` in the image reads that trace (libbabeltrace2 there).
    let trace = format!(
        "/work/pyust-traces/{}",
        traces[0].file_name().to_string_lossy()
    );
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "-v",
            &mount,
            "--user",
            &user,
            "--entrypoint",
            "pyust",
            tag,
            "report",
            &trace,
        ])
        .output()
        .context("docker run pyust report")?;
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |label: &str| {
        table
            .lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains(label))
    };
    if !out.status.success() || !row("__main__.main (/work/fails.py:3)") || !row("sys.exit (C)") {
        bail!(
            "e2e: pyust report in the image:\n{table}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("e2e: pyust report in the image: main and sys.exit, one call each");
    Ok(())
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
