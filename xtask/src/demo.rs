//! `cargo xtask demo [script.py]`: the main job on a machine with Rust and
//! Docker — build the image if it is missing, then print the trace of
//! `docker run --rm pyust script.py`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::docker;

pub fn run(sh: &Shell, script: Option<&str>) -> Result<()> {
    docker::ensure_daemon(sh)?;
    if !docker::image_exists(sh, "pyust") {
        let base = if docker::available(sh, docker::DEFAULT_BASE) {
            docker::DEFAULT_BASE.to_owned()
        } else {
            eprintln!(
                "xtask: {} cannot be pulled here: building the image from a local Debian base \
                 instead (cargo xtask base-image)",
                docker::DEFAULT_BASE
            );
            docker::base_image(sh, docker::DEFAULT_SUITE, false)?
        };
        docker::build(sh, &base, "runtime", "pyust")?;
    }
    let status = match script {
        // The bundled example, in the image's working folder.
        None => {
            eprintln!("xtask: docker run --rm pyust foo.py");
            cmd!(sh, "docker run --rm pyust foo.py").quiet().run()
        }
        Some(script) => {
            let path = Path::new(script);
            if !path.is_file() {
                bail!("{script}: no such file");
            }
            let path = path.canonicalize()?;
            let dir = path.parent().context("a script has a folder")?;
            let name = path.file_name().context("a script has a name")?;
            let mount = format!("{}:/work", dir.display());
            let user = format!("{}:{}", id(sh, "-u")?, id(sh, "-g")?);
            eprintln!(
                "xtask: docker run --rm -v {mount} --user {user} pyust {}",
                name.to_string_lossy()
            );
            cmd!(sh, "docker run --rm -v {mount} --user {user} pyust {name}")
                .quiet()
                .run()
        }
    };
    status.context("the traced script failed (its trace is above)")
}

fn id(sh: &Shell, flag: &str) -> Result<String> {
    Ok(cmd!(sh, "id {flag}").quiet().read()?)
}
