//! The command line of `cargo xtask`, parsed by xflags: the grammar below
//! is also the `--help` text.

use std::ffi::OsString;
use std::path::PathBuf;

xflags::xflags! {
    /// pyust's developer tasks: `cargo xtask <task> [options]`
    /// (docs/development.md says when to run which).
    cmd xtask {
        /// The main job: build the pyust image if missing (from a local
        /// Debian base when ubuntu:26.04 cannot be pulled) and print the
        /// trace of `docker run --rm pyust SCRIPT` (default foo.py).
        cmd demo {
            optional script: PathBuf
        }
        /// Record tests/scenarios/*.py under a live session daemon, in a
        /// container of the image or on this machine, and compare the
        /// normalized traces with xtask/src/snapshots (accept changes:
        /// cargo insta review).
        cmd e2e {
            /// On this machine, not in a container.
            optional --local
            /// The image's BASE_IMAGE (default ubuntu:26.04).
            optional --base image: String
            /// With --local: this interpreter, pyust installed (default: a
            /// virtualenv of python3 with pyust built in).
            optional --python python: PathBuf
        }
        /// What tracing costs: workloads untraced, under cProfile, no-op
        /// hooks (the floor), pyust idle and recording, VizTracer;
        /// ns/event, instructions/event (callgrind), ratios, trace
        /// bytes/event. A benchmark: it asserts nothing.
        cmd bench {
            /// A CPython version (3.11, or 3.14t); repeat for more.
            repeated --python version: String
            /// Rounds per row (default 5).
            optional --rounds n: u32
            /// Wall clock only.
            optional --no-callgrind
        }
        /// How fast `pyust report` reads a trace of fib(N) (default 32:
        /// 14 million events) beside `babeltrace2 TRACE > /dev/null`:
        /// events/s, peak memory.
        cmd bench-report {
            optional --python python: String
            optional --fib n: u32
            optional --rounds n: u32
        }
        /// Events/s one program sustains when `pyust record` streams to an
        /// lttng-relayd over loopback (--relay, --live) beside local disk,
        /// readable and fast mode, discarded events (default fib(25)).
        cmd bench-relay {
            optional --python python: String
            optional --fib n: u32
            optional --rounds n: u32
        }
        /// A real program (the pinned more-itertools test suite, its sdist
        /// fetched once) untraced, under cProfile, VizTracer, trace0 and
        /// pyust: wall-clock ratios, bytes on disk.
        cmd bench-real {
            optional --python python: String
            /// Leave out the run without a size cap.
            optional --no-unbounded
        }
        /// Build pyust into a virtualenv of PYTHON (default python3) and
        /// run the pytest suites, or pytest with the ARGS after `--`.
        cmd pytest {
            optional --python python: String
            /// CPython 3.14 and 3.15 in a container of Debian testing
            /// (local/debian:forky, made when missing).
            optional --container
            /// CPython 3.14t with the GIL off, and the e2e --local snapshots
            /// (3.14t is built from source the first time, into
            /// /var/cache/pyust or PYUST_CACHE).
            optional --free-threaded
            repeated args: OsString
        }
        /// Load `pyust report`'s --perfetto and --perfetto-json timelines in
        /// the Perfetto UI (VizTracer's offline copy) in headless Chromium
        /// and check what it shows.
        cmd perfetto-ui {
            optional --python python: String
        }
        /// The sdist and one manylinux_2_28 wheel per CPython (3.8 to 3.15,
        /// 3.14t) into target/wheels.
        cmd wheels {
            /// Install them with pip in clean Debian containers (bookworm,
            /// trixie, forky; one without LTTng) and run the scenarios.
            optional --check
        }
        /// compose.yaml run here: a relay daemon and APPS (1 to 3, default
        /// 3) app containers of the pyust image recording to it live, with
        /// `pyust top` and `report` checked on this machine.
        cmd fleet {
            optional apps: usize
            /// compose.yaml's services started with docker run.
            optional --docker-run
            /// An interpreter with pyust installed for top and report.
            optional --python python: PathBuf
        }
        /// Debootstrap a minimal Debian (default trixie; forky for Debian
        /// testing) into the local image local/debian:SUITE.
        cmd base-image {
            optional --suite suite: String
            /// Make it again even when it exists.
            optional --force
        }
        /// Install everything `cargo xtask ci` needs that this machine
        /// lacks (apt packages, the Docker daemon, the devcontainer CLI,
        /// Chromium), after listing it.
        cmd setup {
            /// Only list what is missing (exit 1 when anything is).
            optional --check
        }
        /// The layout's rules: imports between src/'s parts run one way,
        /// no circle among xtask's modules, no source file over 600 lines
        /// without its reason.
        cmd layout {}
        /// Everything CI checks: the preflight, fmt, clippy, cargo test,
        /// the layout, ruff, pytest and e2e --local for each CPython here
        /// and 3.14t, perfetto-ui, wheels --check, base images, e2e in the
        /// trixie container, the fleet, pytest --container, the
        /// devcontainer.
        cmd ci {}
    }
}
