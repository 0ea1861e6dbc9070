//! Compiles the LTTng-UST provider (`src/tp/`) and links it with lttng-ust.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    println!("cargo:rerun-if-changed=src/tp/python_tp.c");
    println!("cargo:rerun-if-changed=src/tp/python_tp.h");
    println!("cargo:rerun-if-changed=src/tp/proto_tp.h");
    println!("cargo:rerun-if-changed=src/tp/fast_tp.h");

    // `cargo:` lines make the link flags follow the static archive below.
    let ust = match pkg_config::Config::new()
        .atleast_version("2.13")
        .cargo_metadata(false)
        .probe("lttng-ust")
    {
        Ok(lib) => lib,
        Err(err) => {
            eprintln!(
                "error: lttng-ust >= 2.13 not found ({}); install it: apt-get install liblttng-ust-dev",
                err.to_string().lines().next().unwrap_or("pkg-config failed")
            );
            std::process::exit(1);
        }
    };

    let mut build = cc::Build::new();
    build
        .file("src/tp/python_tp.c")
        .include("src/tp")
        .define("LTTNG_UST_COMPAT_API_VERSION", "1")
        .flag_if_supported("-fvisibility=hidden")
        .warnings(true);
    for dir in &ust.include_paths {
        build.include(dir);
    }
    if std::env::var_os("CARGO_FEATURE_BENCH").is_some() {
        // The prototype's provider and hook, measured by `cargo xtask
        // bench`: C against the headers of the interpreter pyo3 builds for.
        println!("cargo:rerun-if-changed=src/tp/proto_hook.c");
        build
            .define("PYUST_BENCH", None)
            .file("src/tp/proto_hook.c")
            .include(python_include());
    }
    build.compile("pyust_tp");

    // LTTng-UST finds the tracepoints through __start_/__stop_ symbols of
    // their section; keep such sections under --gc-sections (rust-lld's
    // default drops them). Understood by GNU ld >= 2.37 and lld.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nostart-stop-gc");
    for dir in &ust.link_paths {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    for lib in &ust.libs {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
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
