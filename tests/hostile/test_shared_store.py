"""Several ``dispatch run`` processes on one PostgreSQL store (issue #11 acceptance 1 and 2): events
published to any of them are delivered exactly once when nothing fails; a ``kill -9`` of one loses no
acknowledged event; ``--per-endpoint`` holds across all of them.

Real processes, a real PostgreSQL cluster on a Unix socket in the test's directory, receivers on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.store.base import DeliveryStatus
from dispatcher.store.postgres import PostgresStore
from tests.e2e.harness import DispatchProcess, event_line, run_cli, wait_until, write_webhook
from tests.hostile.test_crash_regression import QUICK_RETRY, Streamer

pytestmark = pytest.mark.e2e

PASSWORD = "never-printed-pw"


class CountingReceiver:
    """A loopback receiver that answers 200 after ``delay`` seconds and keeps, per ``webhook-id``, how many
    requests came, and the most requests it ever had in flight at once."""

    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.delay = delay
        self.status = status
        self.lock = threading.Lock()
        self.ids: Counter[str] = Counter()
        self.inflight = 0
        self.peak = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                with outer.lock:
                    outer.inflight += 1
                    outer.peak = max(outer.peak, outer.inflight)
                try:
                    self.rfile.read(int(self.headers.get("Content-Length", "0")))
                    if outer.delay:
                        time.sleep(outer.delay)  # the receiver's own answer time, not synchronisation
                    self.send_response(outer.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with outer.lock:
                        outer.inflight -= 1
                        outer.ids[self.headers["webhook-id"]] += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def delivered(self) -> set[str]:
        with self.lock:
            return set(self.ids)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def shared_url(pg_url: str) -> str:
    """The test's database URL with a password in it (trust auth ignores it): it must never be shown."""
    return pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


@pytest.fixture
def dispatchers() -> Iterator[list[DispatchProcess]]:
    started: list[DispatchProcess] = []
    yield started
    for proc in started:
        proc.stop()


def _start_three(
    tmp_path: Path, config: Path, url: str, started: list[DispatchProcess], *extra: str, metrics: int = 0
) -> list[DispatchProcess]:
    """Three dispatchers on the store; the second reads the URL from DISPATCH_STORE, not its command line;
    with ``metrics``, the first serves /status and /metrics on that port."""
    for n in range(3):
        args = ["--delivery-processes", "0", *extra]
        if n == 0 and metrics:
            args += ["--metrics", f"127.0.0.1:{metrics}"]
        env: dict[str, str] = {}
        if n == 1:
            env["DISPATCH_STORE"] = url
        else:
            args += ["--store", url]
        started.append(DispatchProcess(config, tmp_path / f"state{n}", extra_args=args, env=env))
    return started[-3:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> str:
    """GET from the dispatcher's status port (http.client: no proxy from the environment, ever)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _uuids(prefix: int) -> Iterator[str]:
    return (f"{prefix:08x}{n:024x}" for n in itertools.count())


def test_three_dispatchers_deliver_every_event_exactly_once(
    tmp_path: Path, shared_url: str, dispatchers: list[DispatchProcess]
) -> None:
    """Events published to any of three dispatchers sharing a store are each delivered exactly once, and
    no log, /status or CLI output shows the store's password."""
    receiver = CountingReceiver()
    config = tmp_path / "webhooks.d"
    write_webhook(config, "erp", receiver.url(), retry_countdown_config=QUICK_RETRY)
    port = _free_port()
    procs = _start_three(tmp_path, config, shared_url, dispatchers, metrics=port)
    uuids = _uuids(1)
    published: set[str] = set()
    for _ in range(3):
        for proc in procs:
            batch = [next(uuids) for _ in range(40)]
            acks = proc.publish(event_line(uuid=u) for u in batch)
            assert all(a["ok"] for a in acks)
            published |= set(batch)
    with PostgresStore(shared_url) as store:
        wait_until(lambda: store.counts()[DeliveryStatus.DELIVERED] == len(published), timeout=60)
        assert store.counts()[DeliveryStatus.PENDING] == 0
    assert receiver.delivered() == published
    assert set(receiver.ids.values()) == {1}, "an event was delivered twice"
    status = json.loads(_get(port, "/status"))
    assert status["store"]["backend"] == "postgresql" and "lease_holders" in status["store"]
    assert status["store"]["url"].startswith("postgresql://postgres:***@/")
    metrics = _get(port, "/metrics")
    assert 'dispatch_store_info{backend="postgresql"} 1.0' in metrics
    assert "dispatch_store_lease_holders" in metrics and PASSWORD not in metrics + json.dumps(status)
    listed = run_cli("deliveries", "list", "--store", shared_url, "--status", "delivered", "--limit", "500")
    assert listed.returncode == 0, listed.stderr
    assert PASSWORD not in listed.stdout + listed.stderr
    for proc in procs:
        proc.stop()
        logs = proc.log_path.read_text(errors="replace")
        assert PASSWORD not in logs
        assert "postgres:***@" in logs
    receiver.close()


def _leases_of(url: str, proc: DispatchProcess) -> int:
    """Leases that this dispatcher holds in the store (its holder id carries its pid)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM deliveries WHERE lease_id IS NOT NULL AND holder LIKE %s",
            (f"%:{proc.proc.pid}:%",),
        ).fetchone()
    return int(row[0]) if row else 0


def test_kill_minus_nine_of_one_dispatcher_loses_no_acknowledged_event(
    tmp_path: Path, shared_url: str, dispatchers: list[DispatchProcess]
) -> None:
    """While clients stream to all three, one dispatcher is killed with SIGKILL holding leases: the other
    two reclaim them once expired and every acknowledged event is delivered."""
    receiver = CountingReceiver(delay=0.05)
    config = tmp_path / "webhooks.d"
    write_webhook(config, "erp", receiver.url(), config={"timeout": 5}, retry_countdown_config=QUICK_RETRY)
    procs = _start_three(tmp_path, config, shared_url, dispatchers, "--lease-seconds", "4")
    counters = [_uuids(10 + n) for n in range(3)]
    streams = [
        Streamer(p.socket_path, lambda c=c: next(c), group=5, pace_seconds=0.02)  # type: ignore[misc]
        for p, c in zip(procs, counters, strict=True)
    ]
    victim = procs[0]
    with PostgresStore(shared_url) as store:
        # Kill it once it holds leases of its own (work in flight or queued there).
        wait_until(lambda: len(streams[0].acked) >= 50 and _leases_of(shared_url, victim) > 0, timeout=30)
        victim.kill9()
        assert _leases_of(shared_url, victim) > 0, "the killed dispatcher left leases to reclaim"
        for stream in streams:
            if stream is not streams[0]:
                wait_until(lambda s=stream: len(s.acked) >= 100, timeout=30)  # type: ignore[misc]
            stream.finish()
        acked = {u for s in streams for u in s.acked}
        wait_until(lambda: acked <= receiver.delivered(), timeout=60, interval=0.2)
        wait_until(lambda: store.counts()[DeliveryStatus.PENDING] == 0, timeout=30)
    receiver.close()


def test_per_endpoint_limit_holds_across_three_dispatchers(
    tmp_path: Path, shared_url: str, dispatchers: list[DispatchProcess]
) -> None:
    """With --per-endpoint 4 on three dispatchers and a receiver answering after 100 ms, the receiver never
    has more than 4 requests in flight, and every event is delivered."""
    receiver = CountingReceiver(delay=0.1)
    config = tmp_path / "webhooks.d"
    write_webhook(config, "erp", receiver.url(), retry_countdown_config=QUICK_RETRY)
    procs = _start_three(tmp_path, config, shared_url, dispatchers, "--per-endpoint", "4")
    uuids = _uuids(2)
    published: set[str] = set()
    for proc in procs:
        batch = [next(uuids) for _ in range(40)]
        assert all(a["ok"] for a in proc.publish(event_line(uuid=u) for u in batch))
        published |= set(batch)
    wait_until(lambda: receiver.delivered() == published, timeout=90, interval=0.2)
    assert receiver.peak <= 4, f"{receiver.peak} requests in flight at once"
    receiver.close()


def test_a_failing_endpoint_gets_one_slot_across_three_dispatchers(
    tmp_path: Path, shared_url: str, dispatchers: list[DispatchProcess]
) -> None:
    """An endpoint answering 503 (after 100 ms) has one attempt in flight at a time across all three
    dispatchers, not one per dispatcher."""
    receiver = CountingReceiver(delay=0.1, status=503)
    config = tmp_path / "webhooks.d"
    write_webhook(config, "erp", receiver.url(), retry_countdown_config=QUICK_RETRY)
    procs = _start_three(tmp_path, config, shared_url, dispatchers, "--per-endpoint", "4")
    uuids = _uuids(3)
    for proc in procs:
        assert all(a["ok"] for a in proc.publish(event_line(uuid=next(uuids)) for _ in range(10)))
    wait_until(lambda: sum(receiver.ids.values()) >= 40, timeout=60, interval=0.2)
    assert receiver.peak == 1, f"{receiver.peak} requests in flight at once to a failing endpoint"
    receiver.close()


def test_deliveries_list_show_and_retry_work_on_the_shared_store(
    tmp_path: Path, shared_url: str, dispatchers: list[DispatchProcess]
) -> None:
    """A delivery that died (410) is listed and shown with its attempt through --store, and a retry from
    the command line is picked up by one of the dispatchers and delivered."""
    receiver = CountingReceiver(status=410)
    config = tmp_path / "webhooks.d"
    write_webhook(config, "erp", receiver.url(), retry_countdown_config=QUICK_RETRY)
    procs = _start_three(tmp_path, config, shared_url, dispatchers)
    uuid = next(_uuids(4))
    assert procs[2].publish([event_line(uuid=uuid)])[0]["ok"]
    with PostgresStore(shared_url) as store:
        wait_until(lambda: store.counts()[DeliveryStatus.DEAD] == 1, timeout=30)
        listed = run_cli("deliveries", "list", "--store", shared_url, "--status", "dead", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)
        shown = run_cli("deliveries", "show", "--store", shared_url, str(row["id"]))
        assert shown.returncode == 0 and "410" in shown.stdout, shown.stdout + shown.stderr
        receiver.status = 200
        retried = run_cli("deliveries", "retry", "--store", shared_url, str(row["id"]))
        assert retried.returncode == 0, retried.stderr
        wait_until(lambda: store.counts()[DeliveryStatus.DELIVERED] == 1, timeout=30)
    assert receiver.ids[uuid] == 2
    receiver.close()
