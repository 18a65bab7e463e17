#!/usr/bin/env python3
"""A small loopback HTTP receiver for the benchmarks, run as its own process (no project imports).

    python bench/receiver.py --port 8123 [--status 204]

Answers every POST with ``--status`` (HTTP/1.1, keep-alive) and counts it. When a body is JSON with a
numeric ``payload.sent_at`` (unix seconds, set by the sender just before it sent), it also records
``arrival - sent_at``, taking the arrival time as soon as the body has been read (before any parsing).
``GET /stats`` answers ``{"count": N, "latencies_ms": [...]}``; ``GET /reset`` clears both. It serves as the
latency benchmark's receiver, and as the fast receiver when nginx is not installed. It listens on 127.0.0.1
only and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.latencies_ms: list[float] = []

    def add(self, arrived: float, body: bytes) -> None:
        sent_at = _sent_at(body)
        with self.lock:
            self.count += 1
            if sent_at is not None:
                self.latencies_ms.append((arrived - sent_at) * 1000.0)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"count": self.count, "latencies_ms": list(self.latencies_ms)}

    def reset(self) -> None:
        with self.lock:
            self.count = 0
            self.latencies_ms.clear()


def _sent_at(body: bytes) -> float | None:
    if b"sent_at" not in body:
        return None
    try:
        value = json.loads(body)["payload"]["sent_at"]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def make_server(port: int, status: int) -> ThreadingHTTPServer:
    recorder = _Recorder()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            recorder.add(time.time(), body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if self.path == "/reset":
                recorder.reset()
                payload = b"{}"
            else:
                payload = json.dumps(recorder.snapshot()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback receiver for the benchmarks.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=int, default=204)
    args = parser.parse_args(argv)
    server = make_server(args.port, args.status)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
