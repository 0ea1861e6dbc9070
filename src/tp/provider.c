/*
 * The tracepoint provider: the probes of the `python` and `python_fast`
 * providers (and, for `cargo xtask bench`, the prototype's `pyust_proto`).
 *
 * build.rs links this file alone into a shared object of its own,
 * `_pyust_tp-<hash>.so`, the only part of pyust linked to
 * liblttng-ust.so.1; the extension module dlopens it at import
 * (python_tp.c, pyust_tp_load). Its constructor registers the probes with
 * LTTng-UST, which connects them to the tracepoints the extension defines.
 * This is lttng-ust(3)'s "dynamically loaded tracepoint provider": where
 * LTTng-UST is not installed the dlopen fails, and pyust imports and runs
 * with every tracepoint off.
 */
#define LTTNG_UST_TRACEPOINT_CREATE_PROBES
#include "python_tp.h"
#include "fast_tp.h"
#ifdef PYUST_BENCH
#include "proto_tp.h"
#endif
