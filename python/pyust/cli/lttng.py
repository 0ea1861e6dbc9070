"""The `lttng` command and what `record` asks of it: the session daemon,
the channels' sizes (sub-buffers, `--max-size`, the flight recorder's
buffer), the trace format, relay addresses, discarded events.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import struct
import subprocess
import xml.etree.ElementTree as ET

from .common import fail, human_size

# The channel `pyust record` creates: large sub-buffers so bursts of calls
# fit; when they overflow LTTng discards events and `record` says how many.
CHANNEL = "pyust"

# The fast mode's definitions (python_fast:def) have a channel of their
# own, so that the records' ring buffers (or --max-size's rotation, or a
# flight recorder's overwriting) never take them out from under the
# records that use them.
DEFS_CHANNEL = "pyust_defs"

DEFS_SUBBUF = 256 * 1024

DEFS_NUM_SUBBUF = 4

MODES = ("fast", "readable")

DEFAULT_MODE = "readable"

NUM_SUBBUF = 8

MAX_SUBBUF = 4 << 20

MIN_SUBBUF = 64 << 10


def subbuf_size() -> int:
    """The largest sub-buffer size (up to 4 MiB) whose per-CPU ring buffers
    take at most half of /dev/shm's free space, where LTTng-UST keeps them
    (containers often have only 64 MiB there)."""
    budget = shm_budget()
    if budget is None:
        return MAX_SUBBUF
    cpus = os.cpu_count() or 1
    size = MAX_SUBBUF
    while size > MIN_SUBBUF and cpus * NUM_SUBBUF * size > budget:
        size //= 2
    return size


# `record --max-size`: each stream's data (one per CPU) goes to this many
# trace files of a fixed size; when the last is full LTTng deletes the
# oldest and starts a new one (`--tracefile-size` / `--tracefile-count`).
DEFAULT_MAX_SIZE = 2 << 30

TRACEFILES_PER_STREAM = 4

PAGE = 4096


def possible_cpus() -> int:
    """How many per-CPU streams a channel has: LTTng makes one per possible
    CPU (/sys/devices/system/cpu/possible, e.g. "0-3")."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
        count = 0
        for part in text.split(","):
            first, _, last = part.partition("-")
            count += int(last or first) - int(first) + 1
        return max(count, 1)
    except (OSError, ValueError):
        return os.cpu_count() or 1


def size_limits(max_size: int, subbuf: int | None) -> tuple[int, int]:
    """(sub-buffer size, trace file size) for at most `max_size` bytes of
    trace over all streams; the sub-buffer shrinks to fit a trace file
    unless the user chose it."""
    streams = possible_cpus()
    tracefile = max_size // streams // TRACEFILES_PER_STREAM
    tracefile -= tracefile % PAGE
    smallest = streams * TRACEFILES_PER_STREAM * PAGE
    if tracefile < PAGE:
        fail(
            f"--max-size {human_size(max_size)} is too small for {streams} CPU stream(s): "
            f"at least {human_size(smallest)}"
        )
    if subbuf is not None:
        if subbuf > tracefile:
            fail(
                f"--max-size {human_size(max_size)} leaves {human_size(tracefile)} per trace "
                f"file, less than --subbuf-size {human_size(subbuf)}: raise one or lower the other"
            )
        return subbuf, tracefile
    size = subbuf_size()
    while size > tracefile and size > PAGE:
        size //= 2
    return size, tracefile


# `record --flight-recorder`: a snapshot session. Its ring buffers (per
# user, per CPU, in /dev/shm) overwrite their oldest sub-buffer when full,
# nothing is written to disk until a snapshot copies them out.
DEFAULT_BUFFER = 64 << 20


def shm_budget() -> int | None:
    """Half of /dev/shm's free space, where LTTng-UST keeps ring buffers."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize // 2


def flight_buffer(buffer: int | None, num_subbuf: int) -> int:
    """The sub-buffer size for `--buffer` bytes over all CPU streams."""
    streams = possible_cpus()
    budget = shm_budget()
    wanted = DEFAULT_BUFFER if buffer is None else buffer
    if buffer is None and budget is not None:
        wanted = min(wanted, budget)
    elif budget is not None and buffer is not None and buffer > budget:
        fail(
            f"--buffer {human_size(buffer)} does not fit in /dev/shm "
            f"({human_size(budget * 2)} free; LTTng keeps its ring buffers there)"
        )
    size = MAX_SUBBUF << 4
    while size > PAGE and streams * num_subbuf * size > wanted:
        size //= 2
    if streams * num_subbuf * size > wanted:
        fail(
            f"--buffer {human_size(wanted)} is too small for {streams} CPU stream(s) of "
            f"{num_subbuf} sub-buffers: at least {human_size(streams * num_subbuf * PAGE)}"
        )
    return size


def dropped_data(output: str) -> tuple[int, int, int]:
    """What `--max-size` dropped: (older packets gone, their estimated
    bytes, bytes kept), from the trace's packet indexes (LTTng's CTF index
    files: big-endian, one entry per packet with its size and the stream's
    packet sequence number, which starts at 0)."""
    streams: dict[str, list[tuple[int, int]]] = {}
    for index in glob.glob(os.path.join(output, "**", "index", "*.idx"), recursive=True):
        name = os.path.basename(index)[: -len(".idx")]
        # channel_cpu_n: the n-th trace file of stream channel_cpu.
        stream = os.path.join(os.path.dirname(index), name.rsplit("_", 1)[0])
        try:
            with open(index, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if len(data) < 16:
            continue
        magic, major, _minor, entry = struct.unpack(">IIII", data[:16])
        if magic != 0xC1F1DCC1 or major != 1 or entry < 72:
            continue
        for at in range(16, len(data) - entry + 1, entry):
            fields = struct.unpack(">9Q", data[at : at + 72])
            streams.setdefault(stream, []).append((fields[8], fields[1] // 8))
    dropped = dropped_bytes = kept = 0
    for packets in streams.values():
        size = sum(b for _, b in packets)
        kept += size
        gone = max(seq for seq, _ in packets) + 1 - len(packets)
        if gone > 0:
            dropped += gone
            dropped_bytes += gone * size // len(packets)
    return dropped, dropped_bytes, kept


# `pyust record`: a session of our own around a child interpreter


def _lttng() -> str:
    lttng = shutil.which("lttng")
    if lttng is None:
        fail("`record` needs the lttng command: install lttng-tools (apt-get install lttng-tools)")
    return lttng


def _run_lttng(lttng: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`lttng ARGS`; when it cannot even be started (no file descriptor or
    process left: EMFILE, EAGAIN), a failed run saying why."""
    try:
        return subprocess.run(
            [lttng, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        return subprocess.CompletedProcess(
            [lttng, *args], 126, "", f"cannot run lttng: {exc.strerror}"
        )


def _lttng_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The last line lttng printed about its failure."""
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    return detail[-1] if detail else f"exit {proc.returncode}"


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        fail(f"lttng {what} failed: {_lttng_error(proc)}")


def ensure_session_daemon(lttng: str) -> None:
    """Reach the user's session daemon, or start one."""
    if _run_lttng(lttng, "list").returncode == 0:
        return
    sessiond = shutil.which("lttng-sessiond")
    if sessiond is None:
        fail("no LTTng session daemon runs and lttng-sessiond is not installed")
    proc = subprocess.run(
        [sessiond, "--daemonize"], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if proc.returncode != 0 or _run_lttng(lttng, "list").returncode != 0:
        detail = proc.stderr.strip().splitlines()
        fail(f"cannot start lttng-sessiond{': ' + detail[-1] if detail else ''}")


def trace_format(lttng: str) -> list[str]:
    """`lttng create` options for a CTF 1.8 trace: LTTng 2.15 and later
    write CTF 2 by default, which `pyust report`'s own reader leaves to
    libbabeltrace2 (several times slower)."""
    m = re.search(r"\b(\d+)\.(\d+)\.", _run_lttng(lttng, "--version").stdout)
    if m and (int(m[1]), int(m[2])) >= (2, 15):
        return ["--trace-format=ctf-1.8"]
    return []


RELAY_PORT = 5342  # lttng-relayd's control port; data on the next one


def parse_relay(value: str) -> tuple[str, int | None]:
    """`--relay HOST[:PORT]` (an IPv6 address in brackets: [::1]:5342)."""
    host, port = value, None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                fail(f"--relay {value}: HOST or HOST:PORT")
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    if not host or (port is not None and not (port.isdigit() and 0 < int(port) < 65535)):
        fail(f"--relay {value}: HOST or HOST:PORT (a port from 1 to 65534)")
    return host, None if port is None else int(port)


def relay_host(relay: tuple[str, int | None]) -> str:
    """The relay's host as a URL writes it (an IPv6 address in brackets)."""
    host = relay[0]
    return f"[{host}]" if ":" in host else host


def relay_address(relay: tuple[str, int | None]) -> str:
    return f"{relay_host(relay)}:{relay[1] or RELAY_PORT}"


def relay_url(relay: tuple[str, int | None], path: str) -> str:
    """lttng's net:// URL: control port, data port, the trace's path."""
    port = relay[1]
    ports = "" if port is None else f":{port}:{port + 1}"
    return f"net://{relay_host(relay)}{ports}/{path}"


def relay_problem(relay: tuple[str, int | None]) -> str | None:
    """Why nothing accepts connections on the relay's control port, if so."""
    host, port = relay
    try:
        socket.create_connection((host, port or RELAY_PORT), timeout=3).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def discarded_events(lttng: str, session: str) -> int:
    """Events LTTng discarded in the session's channel (full ring buffers)."""
    proc = _run_lttng(lttng, "--mi", "xml", "list", session)
    if proc.returncode != 0:
        return 0
    try:
        root = ET.fromstring(proc.stdout)
    except ET.ParseError:
        return 0
    total = 0
    for elem in root.iter():
        if elem.tag.rsplit("}", 1)[-1] == "discarded_events" and (elem.text or "").isdigit():
            total += int(elem.text or "0")
    return total
