"""Review of the merged hardening: a receiver's ``Retry-After`` is hostile input like any other.

A 503 with ``Retry-After`` of hundreds of digits made the delay computation raise (an int too large for a
float; past 4,300 digits Python refuses to parse it at all). For a delivery that was a bug path: no attempt
recorded, the lease left to expire, the same again forever. For a callback it killed the callback sender,
so the whole dispatcher exited 70, and after the restart the same callback did it again. Real ``dispatch
run`` processes and receivers on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dispatcher.retry import RETRY_AFTER_CEILING, retry_after_seconds
from tests.conftest import wait_until
from tests.e2e.harness import DispatchProcess, event_line, run_cli, start_receiver, write_webhook

HUGE = ["9" * 400, "9" * 5000]


class RetryAfterReceiver:
    """A loopback HTTP server answering every POST with 503 and a given ``Retry-After`` value."""

    def __init__(self, retry_after: str) -> None:
        self.posts = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.posts += 1
                self.send_response(503)
                self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=HUGE, ids=lambda v: f"{len(v)}-digits")
def hostile(request: pytest.FixtureRequest) -> Iterator[RetryAfterReceiver]:
    receiver = RetryAfterReceiver(request.param)
    yield receiver
    receiver.close()


def _listed(kind: str, state: Path) -> list[dict[str, Any]]:
    out = run_cli(kind, "list", "--state", str(state), "--format", "json")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


@pytest.mark.parametrize("value", HUGE, ids=lambda v: f"{len(v)}-digits")
def test_a_huge_delta_seconds_retry_after_is_the_ceiling(value: str) -> None:
    """A delta-seconds value too large for a float asks for the longest wait allowed, without raising."""
    assert retry_after_seconds(value, 0.0) == float("inf")
    assert min(retry_after_seconds(value, 0.0) or 0.0, RETRY_AFTER_CEILING) == RETRY_AFTER_CEILING


def test_a_delivery_answered_with_a_huge_retry_after_records_its_attempt(
    hostile: RetryAfterReceiver, tmp_path: Path
) -> None:
    """A 503 with a Retry-After of hundreds of digits is a recorded failed attempt with a retry scheduled,
    not a worker error that leaves the delivery leased and unattempted."""
    config = tmp_path / "webhooks.d"
    write_webhook(config, "hostile", hostile.url("/hook"))
    proc = DispatchProcess(config, tmp_path / "state")
    try:
        assert proc.publish([event_line()])[0]["ok"] is True
        wait_until(lambda: any(d["attempts"] >= 1 for d in _listed("deliveries", tmp_path / "state")))
        [delivery] = _listed("deliveries", tmp_path / "state")
        assert delivery["status"] == "failed" and delivery["last_status_code"] == 503, delivery
        assert "worker.unexpected_error" not in proc.logs()
    finally:
        proc.stop()


def test_a_callback_answered_with_a_huge_retry_after_does_not_stop_the_dispatcher(
    hostile: RetryAfterReceiver, tmp_path: Path
) -> None:
    """A callback endpoint answering 503 with a Retry-After of hundreds of digits gets a recorded failed
    callback attempt; the callback sender lives on and the dispatcher keeps running."""
    receiver = start_receiver()
    config = tmp_path / "webhooks.d"
    callback = {"url": hostile.url("/outcomes"), "on": ["delivered"]}
    write_webhook(config, "reported", receiver.url("/hook"), callback=callback)
    proc = DispatchProcess(config, tmp_path / "state")
    try:
        assert proc.publish([event_line()])[0]["ok"] is True
        wait_until(lambda: hostile.posts >= 1)
        wait_until(lambda: any(c["attempts"] >= 1 for c in _listed("callbacks", tmp_path / "state")))
        [row] = _listed("callbacks", tmp_path / "state")
        assert row["status"] == "failed" and row["last_status_code"] == 503, row
        assert proc.proc.poll() is None, f"dispatch exited with {proc.proc.returncode}:\n{proc.logs()}"
        assert proc.publish([event_line()])[0]["ok"] is True
    finally:
        code = proc.stop()
        receiver.close()
    assert code == 0, proc.log_path.read_text()
