#!/usr/bin/env bash
# Runs at every start of the devcontainer: a session daemon for the traces.
set -u
if lttng list >/dev/null 2>&1; then
    exit 0
fi
lttng-sessiond --daemonize && echo "lttng-sessiond started"
