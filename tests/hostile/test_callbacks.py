"""Outcomes that must not get lost, and receiver bytes that must not reach the operator's terminal.

Real ``dispatch run`` processes, real HTTP servers on 127.0.0.1 only: a callback receiver that is down
(port closed) or never answers, a kill -9 of the dispatcher, and a receiver answering terminal escapes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dispatcher.app import store_path
from dispatcher.cli import main
from dispatcher.store.base import NewEvent
from dispatcher.store.schema import SCHEMA_VERSION
from dispatcher.store.sqlite import SQLiteStore
from dispatcher.terminal import visible
from tests.conftest import wait_until
from tests.e2e.harness import (
    DispatchProcess,
    Receiver,
    dispatch_command,
    event_line,
    run_cli,
    start_receiver,
    write_webhook,
)

HOSTILE = "\x1b]0;pwned\x07\x1b[2J"
ONE_RETRY = {"choice": "schedule", "kwargs": {"delays": [1]}, "max_attempts": 2}


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening on it (yet): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Blackhole:
    """A loopback listener that accepts connections, reads nothing and never answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.accepted = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone would not
        self.sock.close()


def callbacks(state: Path) -> list[dict[str, Any]]:
    out = run_cli("callbacks", "list", "--state", str(state), "--format", "json")
    assert out.returncode == 0, out.stderr
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


def deliveries(state: Path) -> list[dict[str, Any]]:
    out = run_cli("deliveries", "list", "--state", str(state), "--format", "json")
    assert out.returncode == 0, out.stderr
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


def start_receiver_on(port: int) -> Receiver:
    """The harness receiver, but on a given loopback port (one that was closed until now)."""
    rec = start_receiver()
    rec.close()
    server = ThreadingHTTPServer(("127.0.0.1", port), rec.server.RequestHandlerClass)
    server.daemon_threads = True
    rec.server = server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return rec


def test_failed_and_dead_callbacks_arrive_once_the_callback_receiver_comes_up(
    receiver: Receiver,
    config_dir: Path,
    tmp_path: Path,
    processes: list[DispatchProcess],
    closed_port: int,
) -> None:
    """With callback.on [failed, dead] and the callback receiver down for their first attempts, both
    outcomes are stored, retried on the default schedule (5 s) and arrive once it is up, each with a stable
    callback_id that is also its webhook-id header."""
    receiver.respond("/t", 500)
    url = f"http://127.0.0.1:{closed_port}/outcomes"
    write_webhook(
        config_dir,
        "t",
        receiver.url("/t"),
        retry_countdown_config=ONE_RETRY,
        callback={"url": url, "on": ["failed", "dead"]},
    )
    state = tmp_path / "state"
    proc = DispatchProcess(config_dir, state)
    processes.append(proc)
    [ack] = proc.publish([event_line(uuid="ab" * 16)])
    assert ack["ok"] is True

    def both_refused_once() -> bool:
        rows = callbacks(state)
        return len(rows) == 2 and all(r["attempts"] >= 1 and r["status"] == "failed" for r in rows)

    wait_until(both_refused_once, timeout=20)
    assert {r["outcome"] for r in callbacks(state)} == {"failed", "dead"}
    outcomes = start_receiver_on(closed_port)
    try:
        got = outcomes.wait_count("/outcomes", 2, timeout=20)
        wait_until(lambda: [r["status"] for r in callbacks(state)] == ["delivered", "delivered"], timeout=10)
    finally:
        outcomes.close()
    docs = [r.json() for r in got]
    assert sorted(d["outcome"] for d in docs) == ["dead", "failed"]
    assert all(d["event"]["uuid"] == "ab" * 16 and d["webhook"] == "t" for d in docs)
    assert [r.headers["webhook-id"] for r in got] == [d["callback_id"] for d in docs]
    assert len({d["callback_id"] for d in docs}) == 2
    failed = next(d for d in docs if d["outcome"] == "failed")
    assert failed["status_code"] == 500 and failed["next_attempt_at"] is not None


def test_a_callback_stored_before_kill_9_is_delivered_after_restart(
    receiver: Receiver,
    config_dir: Path,
    tmp_path: Path,
    processes: list[DispatchProcess],
    closed_port: int,
) -> None:
    """kill -9 while the callback's first POST hangs unanswered: after a restart the stored callback is
    reclaimed and delivered, once the callback receiver answers."""
    hole = Blackhole(closed_port)
    url = f"http://127.0.0.1:{closed_port}/outcomes"
    write_webhook(
        config_dir,
        "t",
        receiver.url("/t"),
        config={"timeout": 30},
        callback={"url": url, "on": ["delivered"]},
    )
    state = tmp_path / "state"
    proc = DispatchProcess(config_dir, state)
    processes.append(proc)
    try:
        proc.publish([event_line(uuid="cd" * 16)])
        receiver.wait_count("/t", 1)
        assert hole.accepted.wait(15), "the callback was never attempted"
        assert [(r["status"], r["attempts"]) for r in callbacks(state)] == [("pending", 0)]
        proc.kill9()
    finally:
        hole.close()
    outcomes = start_receiver_on(closed_port)
    try:
        again = DispatchProcess(config_dir, state)
        processes.append(again)
        [got] = outcomes.wait_count("/outcomes", 1, timeout=20)
        wait_until(lambda: [r["status"] for r in callbacks(state)] == ["delivered"], timeout=10)
        assert len(outcomes.on("/outcomes")) == 1
    finally:
        outcomes.close()
    doc = got.json()
    assert doc["outcome"] == "delivered" and doc["event"]["uuid"] == "cd" * 16
    assert got.headers["webhook-id"] == doc["callback_id"]


def start_hostile_receiver() -> ThreadingHTTPServer:
    """A loopback receiver answering 500 with terminal escapes in its body and in a header value."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = HOSTILE.encode()
            self.send_response(500)
            self.send_header("Content-Type", f"text/plain; x={HOSTILE}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_deliveries_show_and_list_print_no_raw_terminal_escape(
    config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A receiver answering "\\x1b]0;pwned\\x07\\x1b[2J" (body and header) to an event whose type holds
    escapes too: `deliveries show` and `list` print them escaped, never a raw ESC or BEL byte; JSON output
    keeps the exact text."""
    server = start_hostile_receiver()
    try:
        port = server.server_address[1]
        retry = {"choice": "schedule", "kwargs": {"delays": [3600]}, "max_attempts": 2}
        write_webhook(
            config_dir, "t", f"http://127.0.0.1:{port}/t", event_type="*", retry_countdown_config=retry
        )
        state = tmp_path / "state"
        state.mkdir()
        # Ingest refuses such a type (event.type is visible ASCII); a row already in the store (an older
        # version, another producer) can still hold one, and the CLI must still show it safely.
        with SQLiteStore(store_path(state)) as store:
            store.enqueue([NewEvent("ab" * 16, f"package.{HOSTILE}", b"{}", ("t",))], time.time())
        proc = DispatchProcess(config_dir, state)
        processes.append(proc)
        wait_until(lambda: [d["attempts"] for d in deliveries(state)] == [1], timeout=15)
    finally:
        server.shutdown()
        server.server_close()
    [row] = deliveries(state)
    shown = subprocess.run(
        [*dispatch_command(), "deliveries", "show", str(row["id"]), "--state", str(state)],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    listed = subprocess.run(
        [*dispatch_command(), "deliveries", "list", "--state", str(state)],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    for out in (shown, listed):
        assert b"\x1b" not in out and b"\x07" not in out
    escaped = visible(HOSTILE).encode()
    assert escaped == b"\\x1b]0;pwned\\x07\\x1b[2J"
    assert b"response: " + escaped in shown
    assert b"Content-Type: text/plain; x=" + escaped in shown
    assert b"package." + escaped in shown and b"package." + escaped in listed
    doc = json.loads(
        run_cli("deliveries", "show", str(row["id"]), "--state", str(state), "--format", "json").stdout
    )
    assert doc["attempt_log"][0]["response_excerpt"] == HOSTILE


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (HOSTILE, "\\x1b]0;pwned\\x07\\x1b[2J"),
        ("line\roverwritten\n", "line\\roverwritten\\n"),
        ("8-bit CSI \x9b2J and DEL \x7f", "8-bit CSI \\x9b2J and DEL \\x7f"),
        ("bidi \u202egnp.exe", "bidi \\u202egnp.exe"),
        ("a literal \\x1b stays tellable", "a literal \\\\x1b stays tellable"),
        ("plain text, ünïcödé and 日本", "plain text, ünïcödé and 日本"),
    ],
)
def test_visible_escapes_controls_and_keeps_printable_text(text: str, shown: str) -> None:
    """visible() shows control, escape and invisible format characters as escapes and leaves the rest."""
    assert visible(text) == shown


def test_stdin_mode_sends_due_callbacks_before_it_exits(
    receiver: Receiver, config_dir: Path, tmp_path: Path
) -> None:
    """--stdin: at EOF the callbacks that are due are sent before the process exits 0."""
    write_webhook(
        config_dir, "t", receiver.url("/t"), callback={"url": receiver.url("/outcomes"), "on": ["delivered"]}
    )
    proc = DispatchProcess(config_dir, tmp_path / "state", stdin=True)
    out, _ = proc.proc.communicate(event_line() + event_line(), timeout=30)
    proc.stop()
    assert proc.proc.returncode == 0 and out.count(b'"ok":true') == 2
    assert sorted(r.json()["outcome"] for r in receiver.on("/outcomes")) == ["delivered", "delivered"]
    assert [r["status"] for r in callbacks(tmp_path / "state")] == ["delivered", "delivered"]


def test_a_dead_callback_stays_listed_and_is_sent_again_by_callbacks_retry(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A callback answered 410 is dead at once, listed and shown with its reason; `dispatch callbacks retry
    --all-dead` sends it again (the same callback_id) and it is delivered."""
    receiver.respond("/outcomes", 410, 204)
    write_webhook(
        config_dir, "t", receiver.url("/t"), callback={"url": receiver.url("/outcomes"), "on": ["delivered"]}
    )
    state = tmp_path / "state"
    proc = DispatchProcess(config_dir, state)
    processes.append(proc)
    proc.publish([event_line()])
    wait_until(lambda: [r["status"] for r in callbacks(state)] == ["dead"], timeout=15)
    [dead] = callbacks(state)
    assert dead["dead_reason"] == "410 Gone" and dead["attempts"] == 1
    shown = run_cli("callbacks", "show", str(dead["id"]), "--state", str(state))
    assert shown.returncode == 0 and "dead reason:  410 Gone" in shown.stdout and "status 410" in shown.stdout
    out = run_cli("callbacks", "retry", "--all-dead", "--state", str(state))
    assert out.returncode == 0 and "requeued 1 callback" in out.stdout
    first, second = receiver.wait_count("/outcomes", 2, timeout=15)
    assert first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"]
    wait_until(lambda: [r["status"] for r in callbacks(state)] == ["delivered"], timeout=10)
    assert run_cli("callbacks", "retry", str(dead["id"]), "--state", str(state)).returncode == 1
    shown = run_cli("deliveries", "show", str(dead["delivery_id"]), "--state", str(state))
    assert f"callback {dead['id']}: reports delivered, delivered, 1 attempt(s)" in shown.stdout


@pytest.mark.parametrize("group", ["deliveries", "callbacks"])
def test_a_store_from_a_newer_dispatcher_is_refused_in_one_line(tmp_path: Path, group: str) -> None:
    """`dispatch deliveries|callbacks list` on a store with a newer schema exits 1 with one clear line."""
    path = store_path(tmp_path / "state")
    path.parent.mkdir()
    SQLiteStore(path).close()
    header = bytearray(path.read_bytes())
    header[60:64] = (SCHEMA_VERSION + 1).to_bytes(4, "big")  # the user_version field of the file header
    path.write_bytes(bytes(header))
    result = CliRunner().invoke(main, [group, "list", "--state", str(tmp_path / "state")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: cannot open store {path}: schema version {SCHEMA_VERSION + 1} was written by a newer "
        f"dispatcher (this one knows up to {SCHEMA_VERSION}); upgrade it or use another --state"
    ]
