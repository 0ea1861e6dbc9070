# pyust: trace CPython programs into LTTng-UST.
#
#   docker build -t pyust .
#   docker run --rm pyust foo.py                        # the bundled example
#   docker run --rm -v "$PWD:/work" pyust myscript.py   # your script; trace in $PWD
#
# Stages: base (LTTng and Python) -> dev (the toolchain; the devcontainer's
# target) -> build (the wheel) -> runtime (the default: pyust, no toolchain).
# The runtime stage installs the wheel the way `pip install` of a released
# one does: LTTng-UST's runtime package is all it needs (the extension loads
# the tracepoint provider, the only part linked to liblttng-ust, at import);
# no compiler, no -dev package.
# Works with BuildKit and with the legacy builder: cargo's dependencies are
# cached in a layer of their own rather than a cache mount.

# The default: an Ubuntu LTS whose own cargo builds pyo3 0.29 (Rust 1.83+;
# 24.04's is 1.75). Tested here on local Debian bases (trixie, forky).
ARG BASE_IMAGE=ubuntu:26.04

FROM ${BASE_IMAGE} AS base
# PEM certificates to trust besides the system's, for builds behind a
# TLS-intercepting proxy (cargo xtask passes the host's local ones).
ARG EXTRA_CA_CERTS=""
# More apt packages for this stage (tests: another CPython to install on).
ARG BASE_PACKAGES=""
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# liblttng-ust's runtime package is liblttng-ust1t64 on Ubuntu 24.04 and
# Debian 13, liblttng-ust1 before them.
RUN apt-get update \
    && ust=liblttng-ust1t64 \
    && { apt-cache show "$ust" >/dev/null 2>&1 || ust=liblttng-ust1; } \
    && apt-get install -y --no-install-recommends \
        babeltrace2 \
        ca-certificates \
        "$ust" \
        lttng-tools \
        python3 \
        python3-venv \
        $BASE_PACKAGES \
    && rm -rf /var/lib/apt/lists/* \
    && if [ -n "$EXTRA_CA_CERTS" ]; then \
        printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/extra.crt \
        && update-ca-certificates >/dev/null; \
    fi

FROM base AS dev
# More apt packages for the toolchain image (another CPython to test with).
ARG EXTRA_PACKAGES=""
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        cargo \
        gcc \
        git \
        liblttng-ust-dev \
        libc6-dev \
        pkg-config \
        python3-dev \
        rustc \
        sudo \
        $EXTRA_PACKAGES \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        "maturin>=1.5,<2" pytest ruff
ENV PATH=/opt/venv/bin:$PATH

FROM dev AS build
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the manifests change.
COPY Cargo.toml Cargo.lock build.rs pyproject.toml README.md ./
COPY .cargo .cargo
COPY xtask/Cargo.toml xtask/Cargo.toml
RUN mkdir -p src/tp xtask/src python/pyust \
    && printf 'use pyo3::prelude::*;\n#[pymodule]\nfn _pyust(_m: &Bound<'"'"'_, PyModule>) -> PyResult<()> { Ok(()) }\n' > src/lib.rs \
    && echo 'fn main() {}' > xtask/src/main.rs \
    && touch src/tp/python_tp.c src/tp/provider.c src/tp/python_tp.h src/tp/fast_tp.h \
        src/tp/proto_tp.h python/pyust/__init__.py \
    && maturin build --release --compatibility linux --out /tmp/dummy-wheel \
    && rm -rf /tmp/dummy-wheel src python xtask/src
COPY src src
COPY python python
COPY xtask/src xtask/src
# COPY keeps the files' old times: make cargo see them as newer than the stubs.
RUN find src -type f -exec touch {} + && maturin build --release --compatibility linux --out /wheels

FROM base AS runtime
COPY --from=build /wheels /wheels
RUN python3 -m venv /opt/pyust \
    && /opt/pyust/bin/pip install --no-cache-dir --no-index --disable-pip-version-check /wheels/*.whl \
    && rm -rf /wheels \
    && ln -s /opt/pyust/bin/pyust /usr/local/bin/pyust \
    && useradd --uid 10001 --create-home --shell /bin/sh pyust \
    && mkdir -p /work \
    && chmod 1777 /work
# The bundled scenarios (foo.py and the others) sit in the working folder;
# a folder mounted on /work replaces them with the user's own scripts.
COPY --chown=10001:10001 tests/scenarios/ /work/
WORKDIR /work
# Any user id works (`--user "$(id -u):$(id -g)"`): the session daemon that
# `pyust record` starts keeps its state under LTTNG_HOME.
ENV LTTNG_HOME=/tmp \
    PATH=/opt/pyust/bin:$PATH
USER 10001
ENTRYPOINT ["pyust", "record", "--view"]
CMD ["foo.py"]
