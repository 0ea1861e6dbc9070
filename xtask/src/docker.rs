//! Docker: the daemon, images, and the local Debian base (`base-image`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::common::{have, in_ci};

/// The image the Dockerfile defaults to.
pub const DEFAULT_BASE: &str = "ubuntu:26.04";
/// The suite `base-image` bootstraps by default.
pub const DEFAULT_SUITE: &str = "trixie";
/// Debian testing: CPython 3.14 (and 3.15), LTTng 2.16, babeltrace2 2.1.
pub const TESTING_SUITE: &str = "forky";

pub fn local_base(suite: &str) -> String {
    format!("local/debian:{suite}")
}

/// Makes sure a Docker daemon answers. Under CI=true it installs docker.io
/// and starts `dockerd` when needed; elsewhere it says what to run.
pub fn ensure_daemon(sh: &Shell) -> Result<()> {
    if have("docker") && daemon_answers(sh) {
        return Ok(());
    }
    if in_ci() {
        return start_daemon(sh);
    }
    if !have("docker") {
        bail!("no docker client: `cargo xtask setup` installs Docker (docker.io)");
    }
    // /usr/sbin may not be on a user's PATH.
    let installed = have("dockerd")
        || ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
            .iter()
            .any(|p| Path::new(p).exists());
    if !installed {
        bail!(
            "no Docker daemon answers, and none is installed (this docker is a client only): \
             `cargo xtask setup` installs and starts one (or: `apt-get install docker.io` and \
             `systemctl start docker`), then run this again"
        );
    }
    bail!(
        "no Docker daemon answers; start one (`cargo xtask setup`, or as root: \
         `dockerd > /var/log/dockerd.log 2>&1 &`, or `systemctl start docker`) and run this again"
    )
}

/// Whether a Docker daemon answers the client.
pub fn daemon_answers(sh: &Shell) -> bool {
    have("docker")
        && cmd!(sh, "docker info")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok()
}

/// Installs docker.io when no daemon is installed and starts `dockerd` in
/// the background (its log in target/dockerd.log) when none answers.
pub fn start_daemon(sh: &Shell) -> Result<()> {
    if !have("docker") || !have("dockerd") {
        apt_install(sh, &["docker.io"])?;
    }
    if daemon_answers(sh) {
        return Ok(());
    }
    eprintln!("xtask: starting dockerd");
    let log = std::fs::File::create(crate::common::target_dir(sh).join("dockerd.log"))
        .or_else(|_| std::fs::File::create("/tmp/pyust-dockerd.log"))?;
    Command::new("dockerd")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting dockerd")?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if daemon_answers(sh) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("dockerd started but does not answer after 60 s (see target/dockerd.log)")
}

/// `apt-get install` (through sudo when not root).
pub fn apt_install(sh: &Shell, packages: &[&str]) -> Result<()> {
    eprintln!("xtask: apt-get install {}", packages.join(" "));
    // Through sudo when not root (sudo runs apt-get with the arguments).
    let (program, sudo) = if crate::common::is_root() {
        ("apt-get", None)
    } else {
        ("sudo", Some("apt-get"))
    };
    cmd!(sh, "{program} {sudo...} update -qq").quiet().run()?;
    cmd!(
        sh,
        "{program} {sudo...} install -y -qq --no-install-recommends {packages...}"
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .quiet()
    .ignore_stdout()
    .run()?;
    Ok(())
}

pub fn image_exists(sh: &Shell, image: &str) -> bool {
    cmd!(sh, "docker image inspect {image}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// Whether `image` is here or can be pulled.
pub fn available(sh: &Shell, image: &str) -> bool {
    image_exists(sh, image)
        || cmd!(sh, "docker pull -q {image}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok()
}

/// Certificates this machine trusts beyond the system's (a TLS-intercepting
/// proxy's), so builds in containers reach PyPI and crates.io here too.
pub fn extra_ca_certs() -> String {
    let mut pem = String::new();
    if let Ok(entries) = std::fs::read_dir("/usr/local/share/ca-certificates") {
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if path.extension().is_some_and(|e| e == "crt") {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    pem.push_str(&text);
                }
            }
        }
    }
    pem
}

/// `docker build --target <target> -t <tag>` with BASE_IMAGE = `base`.
pub fn build(sh: &Shell, base: &str, target: &str, tag: &str) -> Result<()> {
    build_with(sh, base, target, tag, &[])
}

/// The same, with EXTRA_PACKAGES (apt) in the dev stage.
pub fn build_with(
    sh: &Shell,
    base: &str,
    target: &str,
    tag: &str,
    extra_packages: &[&str],
) -> Result<()> {
    let base_arg = format!("BASE_IMAGE={base}");
    let ca_arg = format!("EXTRA_CA_CERTS={}", extra_ca_certs());
    let extra_arg = format!("EXTRA_PACKAGES={}", extra_packages.join(" "));
    eprintln!("xtask: docker build --target {target} -t {tag} (BASE_IMAGE={base})");
    cmd!(
        sh,
        "docker build --network host --build-arg {base_arg} --build-arg {ca_arg} --build-arg {extra_arg} --target {target} -t {tag} ."
    )
    .quiet()
    .run()
    .with_context(|| format!("building {tag} from {base}"))
}

/// The Dockerfile's `base` stage (LTTng's runtime, lttng-tools,
/// babeltrace2, CPython; no compiler, no -dev package), with more apt
/// packages (BASE_PACKAGES).
pub fn build_base(sh: &Shell, base: &str, tag: &str, packages: &[&str]) -> Result<()> {
    let base_arg = format!("BASE_IMAGE={base}");
    let packages_arg = format!("BASE_PACKAGES={}", packages.join(" "));
    eprintln!("xtask: docker build --target base -t {tag} (BASE_IMAGE={base})");
    cmd!(
        sh,
        "docker build --network host --build-arg {base_arg} --build-arg {packages_arg} --target base -t {tag} ."
    )
    .quiet()
    .run()
    .with_context(|| format!("building {tag} from {base}"))
}

/// `base` with CPython alone (python3, python3-venv): nothing of LTTng.
pub fn build_python_only(sh: &Shell, base: &str, tag: &str) -> Result<()> {
    let dockerfile = format!(
        "FROM {base}\nRUN apt-get update \\\n    && DEBIAN_FRONTEND=noninteractive apt-get install -y \
         --no-install-recommends python3 python3-venv \\\n    && rm -rf /var/lib/apt/lists/*\n"
    );
    eprintln!("xtask: docker build -t {tag} (python3 alone, from {base})");
    cmd!(sh, "docker build --network host -t {tag} -")
        .stdin(dockerfile)
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("building {tag} from {base}"))
}

/// `cargo xtask base-image [--suite SUITE]`: a minimal Debian, bootstrapped
/// with debootstrap from Debian's mirror, imported as `local/debian:SUITE`.
pub fn base_image(sh: &Shell, suite: &str, force: bool) -> Result<String> {
    let image = local_base(suite);
    ensure_daemon(sh)?;
    if !force && image_exists(sh, &image) {
        eprintln!("xtask: {image} exists (--force rebuilds it)");
        return Ok(image);
    }
    if !have("debootstrap") {
        if !in_ci() {
            bail!("debootstrap is not installed: apt-get install debootstrap");
        }
        apt_install(sh, &["debootstrap"])?;
    }
    let rootfs = crate::common::target_dir(sh).join(format!("rootfs-{suite}"));
    if rootfs.exists() {
        sh.remove_path(&rootfs)?;
    }
    let mirror =
        std::env::var("DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    // A debootstrap older than the suite has no script of its name: testing
    // and unstable bootstrap alike (`sid`).
    let scripts = Path::new("/usr/share/debootstrap/scripts");
    let script = if scripts.join(suite).exists() {
        Vec::new()
    } else {
        vec![scripts.join("sid").to_string_lossy().into_owned()]
    };
    eprintln!("xtask: debootstrap {suite} from {mirror} (about a minute)");
    cmd!(
        sh,
        "debootstrap --variant=minbase --include=ca-certificates {suite} {rootfs} {mirror} {script...}"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .context("debootstrap failed")?;
    // A local base is for builds here, maybe long after: a testing suite's
    // Release file soon passes its Valid-Until date, which apt would refuse.
    std::fs::write(
        rootfs.join("etc/apt/apt.conf.d/99pyust-no-valid-until"),
        "Acquire::Check-Valid-Until \"false\";\n",
    )?;
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let path = rootfs.join(dir);
        for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            if entry.path().is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    import(&rootfs, &image)?;
    sh.remove_path(&rootfs)?;
    eprintln!("xtask: built {image}");
    Ok(image)
}

/// `tar -C rootfs -c . | docker import - image`
fn import(rootfs: &Path, image: &str) -> Result<()> {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let status = Command::new("docker")
        .args(["import", "-", image])
        .stdin(tar.stdout.take().context("tar's output")?)
        .stdout(Stdio::null())
        .status()
        .context("running docker import")?;
    if !tar.wait()?.success() || !status.success() {
        bail!("importing {} as {image} failed", rootfs.display());
    }
    Ok(())
}
