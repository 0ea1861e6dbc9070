#!/usr/bin/env bash
# Runs once when the devcontainer is created: check the toolchain the dev
# stage of the Dockerfile installed, and fetch the crates.
set -euo pipefail
cargo --version
maturin --version
lttng --version | head -n 1
babeltrace2 --version | head -n 1
pkg-config --modversion lttng-ust
cargo fetch --quiet
