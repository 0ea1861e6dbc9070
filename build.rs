//! Builds the C half of pyust from `src/tp/`:
//!
//! - `python_tp.c`, linked into the extension module: the tracepoints
//!   (dynamic probe linkage: the module does not link liblttng-ust) and the
//!   emitters Rust calls;
//! - `provider.c`, linked into `python/pyust/_pyust_tp-<hash>.so`: the
//!   probes, linked to liblttng-ust.so.1, dlopened by the module at import.
//!
//! Only LTTng-UST's headers and liblttng-ust.so.1 are needed to build.
//! Wheels use the 2.13 headers (`cargo xtask wheels`): a provider built
//! against newer ones is refused by older LTTng-UST runtimes.

use std::path::{Path, PathBuf};

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    for file in [
        "python_tp.c",
        "provider.c",
        "python_tp.h",
        "fast_tp.h",
        "proto_tp.h",
    ] {
        println!("cargo:rerun-if-changed=src/tp/{file}");
    }
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bench = std::env::var_os("CARGO_FEATURE_BENCH").is_some();
    let ust = Ust::find(&out);

    // The provider, first: the extension needs its file name.
    let mut probes = ust.build();
    probes.file("src/tp/provider.c").pic(true);
    if bench {
        probes.define("PYUST_BENCH", None);
    }
    let provider = link_provider(&probes, &probes.compile_intermediates(), &ust, &out);

    let mut build = ust.build();
    build
        .file("src/tp/python_tp.c")
        .define("PYUST_PROVIDER", format!("\"{provider}\"").as_str());
    if bench {
        // The prototype's provider and hook, measured by `cargo xtask
        // bench`: C against the headers of the interpreter pyo3 builds for.
        println!("cargo:rerun-if-changed=src/tp/proto_hook.c");
        build
            .define("PYUST_BENCH", None)
            .file("src/tp/proto_hook.c")
            .include(python_include());
    }
    build.compile("pyust_tp");
    // dlopen, dladdr (in libc itself from glibc 2.34 on).
    println!("cargo:rustc-link-lib=dylib=dl");
}

/// LTTng-UST as found by pkg-config: its headers and liblttng-ust's
/// (copied alone into a folder of their own, so that a cross compiler such
/// as maturin's zig sees no other header of the build machine's) and
/// liblttng-ust.so.1.
struct Ust {
    include: PathBuf,
    library: PathBuf,
}

impl Ust {
    fn find(out: &Path) -> Ust {
        let lib = match pkg_config::Config::new()
            .atleast_version("2.13")
            .cargo_metadata(false)
            .env_metadata(false)
            .probe("lttng-ust")
        {
            Ok(lib) => lib,
            Err(err) => fail(&format!(
                "lttng-ust >= 2.13 not found ({}); install its headers: apt-get install liblttng-ust-dev",
                err.to_string().lines().next().unwrap_or("pkg-config failed")
            )),
        };
        let variable = |name: &str| {
            pkg_config::get_variable("lttng-ust", name)
                .map(PathBuf::from)
                .unwrap_or_else(|err| fail(&format!("pkg-config lttng-ust {name}: {err}")))
        };
        // The probes also include liburcu's headers (a dependency of
        // liblttng-ust-dev), usually in the same folder.
        let dirs: Vec<PathBuf> = lib
            .include_paths
            .iter()
            .cloned()
            .chain([variable("includedir"), PathBuf::from("/usr/include")])
            .collect();
        let include = out.join("lttng-include");
        for (dir, probe) in [("lttng", "tracepoint.h"), ("urcu", "compiler.h")] {
            let parent = dirs
                .iter()
                .find(|d| d.join(dir).join(probe).is_file())
                .unwrap_or_else(|| {
                    fail(&format!(
                        "{dir}/{probe} not found in {dirs:?} (liblttng-ust-dev)"
                    ))
                });
            // The folder, and its top-level headers (urcu-pointer.h, ...).
            for entry in std::fs::read_dir(parent).unwrap_or_else(|err| fail(&err.to_string())) {
                let name = entry
                    .unwrap_or_else(|err| fail(&err.to_string()))
                    .file_name();
                let name = name.to_string_lossy();
                if name == dir || (name.starts_with(dir) && name.ends_with(".h")) {
                    copy_path(&parent.join(&*name), &include.join(&*name));
                }
            }
            println!("cargo:rerun-if-changed={}", parent.join(dir).display());
        }
        let library = variable("libdir").join("liblttng-ust.so.1");
        if !library.exists() {
            fail(&format!("{} not found", library.display()));
        }
        Ust { include, library }
    }

    /// A C build with LTTng-UST's headers and pyust's.
    fn build(&self) -> cc::Build {
        let mut build = cc::Build::new();
        build
            .include("src/tp")
            .include(&self.include)
            .define("LTTNG_UST_COMPAT_API_VERSION", "1")
            .flag_if_supported("-fvisibility=hidden")
            // clang (maturin --zig) on LTTng-UST's own macros.
            .flag_if_supported("-Wno-gnu-folding-constant")
            .warnings(true);
        build
    }
}

/// Links the provider's objects into a shared object, and puts it in
/// `python/pyust/` (where maturin packages it, and where an editable
/// install finds it) under a name made of its content's hash. Returns the
/// name. Builds for other interpreters or systems that share the folder
/// (containers mounting the source) leave each other's file alone, and a
/// file in use is never rewritten.
fn link_provider(build: &cc::Build, objects: &[PathBuf], ust: &Ust, out: &Path) -> String {
    // Link against liblttng-ust.so.1 alone, from a folder of its own: the
    // build machine's other libraries stay out of the search path.
    let libdir = out.join("lttng-lib");
    std::fs::create_dir_all(&libdir).unwrap_or_else(|err| fail(&err.to_string()));
    let link = libdir.join("liblttng-ust.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&ust.library, &link).unwrap_or_else(|err| fail(&err.to_string()));

    let built = out.join("_pyust_tp.so");
    let mut cc = build.get_compiler().to_command();
    cc.args(["-shared", "-s", "-Wl,-soname,_pyust_tp.so", "-o"])
        .arg(&built)
        .args(objects)
        .arg("-L")
        .arg(&libdir)
        .arg("-llttng-ust");
    let status = cc
        .status()
        .unwrap_or_else(|err| fail(&format!("running {cc:?}: {err}")));
    if !status.success() {
        fail(&format!("linking the provider failed: {cc:?}"));
    }
    let bytes = std::fs::read(&built).unwrap_or_else(|err| fail(&err.to_string()));
    // FNV-1a: stable across Rust versions and machines.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let name = format!("_pyust_tp-{hash:016x}.so");
    let dest = Path::new("python/pyust").join(&name);
    if std::fs::read(&dest).ok().as_deref() != Some(&bytes[..]) {
        // Written aside, then renamed: a process that has the old file
        // mapped keeps it.
        let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &dest))
            .unwrap_or_else(|err| fail(&format!("writing {}: {err}", dest.display())));
    }
    name
}

/// Copies a file, or a folder and everything in it.
fn copy_path(from: &Path, to: &Path) {
    if !from.is_dir() {
        std::fs::copy(from, to).unwrap_or_else(|err| fail(&err.to_string()));
        return;
    }
    std::fs::create_dir_all(to).unwrap_or_else(|err| fail(&err.to_string()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|err| fail(&err.to_string())) {
        let path = entry.unwrap_or_else(|err| fail(&err.to_string())).path();
        copy_path(
            &path,
            &to.join(path.file_name().expect("an entry has a name")),
        );
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

/// The C headers directory of the interpreter pyo3 builds for.
fn python_include() -> String {
    let python = pyo3_build_config::get()
        .executable()
        .map(str::to_owned)
        .unwrap_or_else(|| "python3".to_owned());
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['include'])",
        ])
        .output()
        .unwrap_or_else(|err| panic!("cannot run {python}: {err}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
