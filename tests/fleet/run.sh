#!/bin/sh
# What each app container of compose.yaml runs: every program named in
# PYUST_FLEET_RUN (default: app.py beside this file), one after another,
# each under `pyust record --relay relay --live` (a session of its own,
# streamed to the relay daemon and readable live). SIGTERM (`docker
# compose stop`) ends the current program's recording cleanly.
set -u
relay=${PYUST_RELAY:-relay}
programs=${PYUST_FLEET_RUN:-$(dirname "$0")/app.py}

# The relay daemon's container may start after this one: wait for it.
python3 - "$relay" <<'PY' || exit 2
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1) if sys.argv[1].count(":") == 1 else (sys.argv[1], "5342")
deadline = time.monotonic() + 60
while True:
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"run.sh: no relay daemon answers at {host}:{port} ({exc})")
        time.sleep(0.2)
PY

child=
trap '[ -n "$child" ] && kill -TERM "$child"; wait "$child"; exit 143' TERM INT
for program in $programs; do
    pyust record --relay "$relay" --live "$program" &
    child=$!
    wait "$child" || exit $?
    child=
done
