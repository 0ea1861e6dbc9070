//! The free-threaded CPython (3.14t) the tests run on: no distribution
//! packages one, so it is built from the upstream tarball of Debian's
//! python3.14 source package (`--disable-gil`), once per machine, into a
//! cache outside the clone (`PYUST_CACHE`, else /var/cache/pyust when
//! writable, else ~/.cache/pyust).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::common::in_ci;

pub const VERSION: &str = "3.14.4";
/// The source package's upstream tarball, and where it is fetched from:
/// Debian's pool keeps only the current upload (and this machine's
/// mirror serves no sources), Ubuntu's keeps the same file longer.
const TARBALL: &str = "python3.14_3.14.4.orig.tar.xz";
const SHA256: &str = "d923c51303e38e249136fc1bdf3568d56ecb03214efdef48516176d3d7faaef8";
const MIRRORS: [&str; 2] = [
    "http://deb.debian.org/debian/pool/main/p/python3.14",
    "http://archive.ubuntu.com/ubuntu/pool/main/p/python3.14",
];
/// What building CPython with its usual modules needs (Debian/Ubuntu).
pub const BUILD_DEPS: [&str; 12] = [
    "build-essential",
    "curl",
    "xz-utils",
    "libssl-dev",
    "zlib1g-dev",
    "libffi-dev",
    "libbz2-dev",
    "liblzma-dev",
    "libsqlite3-dev",
    "libreadline-dev",
    "uuid-dev",
    "libncurses-dev",
];
/// Written last into the prefix: a build that stopped half-way has none.
const COMPLETE: &str = ".pyust-complete";

/// Where builds that outlive the clone go.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PYUST_CACHE") {
        return PathBuf::from(dir);
    }
    let system = Path::new("/var/cache/pyust");
    if std::fs::create_dir_all(system).is_ok() && writable(system) {
        return system.to_owned();
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("pyust")
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(".probe");
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(probe);
    ok
}

/// The free-threaded interpreter, built first when the cache has none.
/// The free-threaded CPython when it is already built here.
pub fn built() -> Option<PathBuf> {
    let prefix = cache_dir().join(format!("cpython-{VERSION}t"));
    let exe = prefix.join("bin").join("python3.14t");
    (prefix.join(COMPLETE).exists() && exe.exists()).then_some(exe)
}

pub fn python(sh: &Shell) -> Result<PathBuf> {
    let prefix = cache_dir().join(format!("cpython-{VERSION}t"));
    let exe = prefix.join("bin").join("python3.14t");
    if prefix.join(COMPLETE).exists() && exe.exists() {
        eprintln!("xtask: free-threaded CPython {VERSION}: {}", exe.display());
        return Ok(exe);
    }
    build(sh, &prefix)?;
    Ok(exe)
}

fn build(sh: &Shell, prefix: &Path) -> Result<()> {
    let missing: Vec<&str> = BUILD_DEPS
        .iter()
        .copied()
        .filter(|p| {
            !cmd!(sh, "dpkg-query -W")
                .arg("-f=${Status}")
                .arg(p)
                .quiet()
                .ignore_stderr()
                .read()
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        if !in_ci() {
            bail!(
                "building the free-threaded CPython needs: apt-get install {}",
                missing.join(" ")
            );
        }
        crate::docker::apt_install(sh, &missing)?;
    }
    let src = cache_dir().join("src");
    sh.create_dir(&src)?;
    let tarball = src.join(TARBALL);
    if !tarball.exists() || sha256(sh, &tarball)? != SHA256 {
        let partial = src.join(format!("{TARBALL}.partial"));
        let mut fetched = false;
        for mirror in MIRRORS {
            let url = format!("{mirror}/{TARBALL}");
            eprintln!("xtask: fetching {url}");
            if cmd!(sh, "curl -fsSL --retry 2 -o {partial} {url}")
                .run()
                .is_ok()
            {
                fetched = true;
                break;
            }
        }
        if !fetched {
            bail!("cannot fetch {TARBALL} from {}", MIRRORS.join(" or "));
        }
        let sum = sha256(sh, &partial)?;
        if sum != SHA256 {
            bail!("{TARBALL}: sha256 {sum}, expected {SHA256}");
        }
        std::fs::rename(&partial, &tarball)?;
    }
    let tree = src.join(format!("Python-{VERSION}"));
    if tree.exists() {
        sh.remove_path(&tree)?;
    }
    if prefix.exists() {
        sh.remove_path(prefix)?;
    }
    cmd!(sh, "tar -xJf {tarball} -C {src}").run()?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    eprintln!("xtask: building free-threaded CPython {VERSION} into {} (about 5 minutes on 2 cores, once per machine)", prefix.display());
    let _dir = sh.push_dir(&tree);
    let log = tree.join("build.log");
    let step = |what: &str, script: String| -> Result<()> {
        cmd!(sh, "bash -c {script}")
            .quiet()
            .run()
            .with_context(|| format!("{what} failed (see {})", log.display()))
    };
    let quiet = format!(">>{} 2>&1", log.display());
    step(
        "configure",
        format!(
            "./configure --disable-gil --prefix={} --without-ensurepip {quiet}",
            prefix.display()
        ),
    )?;
    step("make", format!("make -j{jobs} {quiet}"))?;
    step("make install", format!("make install {quiet}"))?;
    std::fs::write(prefix.join(COMPLETE), VERSION)?;
    drop(_dir);
    sh.remove_path(&tree)?;
    Ok(())
}

fn sha256(sh: &Shell, file: &Path) -> Result<String> {
    let out = cmd!(sh, "sha256sum {file}").quiet().read()?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}
