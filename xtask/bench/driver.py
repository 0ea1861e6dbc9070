"""One benchmark run: `driver.py MODE WORKLOAD SIZE`, prints JSON.

Modes: untraced, cprofile, floor-profile (a C no-op PyEval_SetProfile hook,
the floor of any profile-hook tracer), floor-monitoring (C no-op
sys.monitoring callbacks for pyust's events; 3.12+), floor-prototype (the
original prototype's design: a C profile hook recording co_name alone as
pyust_proto:* events; a session records them or not, as the caller set
up), pyust (enabled; a
session records or not, as the caller set up), viztracer (its defaults;
save() timed apart).
"""

import json
import os
import sys
import tempfile
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def builtins_loop(n):
    data = [3, -1, 2]
    total = 0
    for i in range(n):
        total += len(data) + abs(-i) + min(i, 7)
    return total


class Counter:
    def __init__(self):
        self.value = 0

    def bump(self, by):
        self.value += by
        return self.value


def methods(n):
    c = Counter()
    for i in range(n):
        c.bump(i)
    return c.value


def numbers(n):
    for i in range(n):  # noqa: UP028 - one generator resume per value
        yield i


def generators(n):
    total = 0
    for value in numbers(n):
        total += value
    return total


WORKLOADS = {
    "fib": fib,
    "builtins": builtins_loop,
    "methods": methods,
    "generators": generators,
}


def main():
    mode, workload, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    func = WORKLOADS[workload]
    result = {"mode": mode, "workload": workload, "size": size, "pid": os.getpid()}
    if mode == "untraced":
        start = time.perf_counter()
        func(size)
    elif mode == "cprofile":
        import cProfile

        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.runcall(func, size)
    elif mode in ("floor-profile", "floor-monitoring", "floor-prototype"):
        from pyust import _pyust

        kind = mode.split("-", 1)[1]
        _pyust._bench_floor(kind, True)
        start = time.perf_counter()
        func(size)
        elapsed = time.perf_counter() - start
        _pyust._bench_floor(kind, False)
        result["seconds"] = elapsed
        print(json.dumps(result))
        return
    elif mode == "pyust":
        import pyust

        pyust.enable()
        result["armed"] = pyust._pyust._armed()
        start = time.perf_counter()
        func(size)
        elapsed = time.perf_counter() - start
        pyust.disable()
        result["seconds"] = elapsed
        print(json.dumps(result))
        return
    elif mode == "trace0":
        from trace0 import Tracer

        with tempfile.TemporaryDirectory() as tmp:
            tracer = Tracer(os.path.join(tmp, "trace.pb"))
            tracer.__enter__()
            start = time.perf_counter()
            func(size)
            elapsed = time.perf_counter() - start
            save_start = time.perf_counter()
            tracer.__exit__(None, None, None)
            result["save_seconds"] = time.perf_counter() - save_start
            result["trace_bytes"] = os.path.getsize(os.path.join(tmp, "trace.pb"))
        result["seconds"] = elapsed
        print(json.dumps(result))
        return
    elif mode == "viztracer":
        from viztracer import VizTracer

        tracer = VizTracer(verbose=0)
        tracer.start()
        start = time.perf_counter()
        func(size)
        elapsed = time.perf_counter() - start
        tracer.stop()
        with tempfile.TemporaryDirectory() as tmp:
            save_start = time.perf_counter()
            tracer.save(os.path.join(tmp, "result.json"))
            result["save_seconds"] = time.perf_counter() - save_start
        result["seconds"] = elapsed
        print(json.dumps(result))
        return
    else:
        sys.exit(f"unknown mode {mode}")
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))


if __name__ == "__main__":
    main()
