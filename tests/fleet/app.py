"""The program of the fleet example (compose.yaml): a small service that
handles requests for PYUST_APP_SECONDS seconds (default 30), pausing
between them as a service waits for its clients, so each app container
has Python work to trace and `pyust top` something to show."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time


def parse(raw: str) -> dict:
    return json.loads(raw)


def price(order: dict) -> float:
    total = 0.0
    for item in order["items"]:
        total += item["qty"] * item["unit"]
    return round(total, 2)


def sign(text: str, rounds: int) -> str:
    digest = text.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:12]


def handle(raw: str) -> dict:
    order = parse(raw)
    return {"id": order["id"], "total": price(order), "sig": sign(raw, 20)}


def request(n: int) -> str:
    return json.dumps({"id": n, "items": [{"qty": i % 5 + 1, "unit": 1.5 * i} for i in range(20)]})


def serve(seconds: float) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        handle(request(n))
        n += 1
        time.sleep(0.005)
    return n


if __name__ == "__main__":
    seconds = float(os.environ.get("PYUST_APP_SECONDS", "30"))
    print(f"{socket.gethostname()}: {serve(seconds)} requests in {seconds:g} s", flush=True)
