"""Connection floods against a real ``dispatch run``: past ``--max-connections`` on the event socket, and past
the fixed cap on the ``--metrics`` port, new connections are refused cleanly, counted and logged once per
burst, while the connections already open keep working. Everything stays on 127.0.0.1 and a Unix socket.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from dispatcher.caps import STATUS_MAX_CONNECTIONS
from tests.conftest import wait_until
from tests.e2e.harness import DispatchProcess, Receiver, event_line, run_cli, write_webhook
from tests.hostile.test_ingest_hostile import _healthz
from tests.loopback import free_port, unix_client

SOCKET_REFUSED = 'dispatch_connections_refused_total{listener="socket"}'
REFUSAL = {"ok": False, "error": "too many connections (at most 2); retry later"}


def _line(sock: socket.socket) -> dict[str, object]:
    """The next line the dispatcher writes on ``sock``."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, f"closed after {data!r}"
        data += chunk
    answer: dict[str, object] = json.loads(data)
    return answer


def _ack(sock: socket.socket, n: int) -> dict[str, object]:
    sock.sendall(event_line(payload={"n": n}))
    return _line(sock)


def _producer(path: Path, n: int) -> socket.socket:
    """A connection whose first event was acknowledged. Retried while refused: the harness's readiness
    probe holds a slot until the dispatcher sees it close."""
    result: list[socket.socket] = []

    def served() -> bool:
        sock = unix_client(path)
        try:
            if _ack(sock, n)["ok"] is True:
                result.append(sock)
                return True
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.close()
        return False

    wait_until(served)
    return result[0]


def _metric(port: int, sample: str) -> float | None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    return None


def test_socket_clients_past_max_connections_are_refused_and_the_open_ones_keep_working(
    tmp_path: Path, config_dir: Path, receiver: Receiver, processes: list[DispatchProcess]
) -> None:
    """With ``--max-connections 2`` and two producers connected, five more connections each read one
    refusal line and are closed; ``dispatch publish`` at the cap prints the refusal and exits 1; the
    refusals are counted, logged as one line, and both producers' events are still acknowledged and
    delivered."""
    write_webhook(config_dir, "erp", receiver.url("/hook"))
    port = free_port()
    # Every producer here is this test's process: its shares are the whole cap (the next test: the shares).
    args = ["--max-connections", "2", "--max-connections-per-process", "2", "--max-connections-per-user", "2"]
    args += ["--metrics", f"127.0.0.1:{port}"]
    proc = DispatchProcess(config_dir, tmp_path / "state", extra_args=args)
    processes.append(proc)
    held: list[socket.socket] = []
    try:
        held += [_producer(proc.socket_path, i) for i in range(2)]
        before = _metric(port, SOCKET_REFUSED) or 0.0  # (a producer may have been refused once)
        for _ in range(5):
            with unix_client(proc.socket_path) as extra:
                assert _line(extra) == REFUSAL
        published = run_cli("publish", "--socket", str(proc.socket_path), input=event_line(payload={"n": 9}))
        assert published.returncode == 1 and "1 rejected" in published.stderr
        assert "Traceback" not in published.stderr  # the reset that follows the refusal is its end
        assert json.loads(published.stdout.splitlines()[0]) == REFUSAL
        assert [_ack(c, i)["ok"] for i, c in enumerate(held, start=2)] == [True, True]
    finally:
        for c in held:
            c.close()
    received = receiver.wait_count("/hook", 4, timeout=60)
    assert sorted(r.json()["payload"]["n"] for r in received) == [0, 1, 2, 3]
    assert _metric(port, SOCKET_REFUSED) == before + 6
    assert proc.logs().count("connections.refused") == 1
    assert _healthz(port) == (200, "ok\n")


def test_one_process_holding_connections_leaves_room_for_other_producers(
    tmp_path: Path, config_dir: Path, receiver: Receiver, processes: list[DispatchProcess]
) -> None:
    """With ``--max-connections 8`` a process may hold 2 (a quarter): this test's process holds two idle
    producers, its third connection reads a refusal that says why, and ``dispatch publish`` (another
    process of the same user) is still served: its event is acknowledged and delivered."""
    write_webhook(config_dir, "erp", receiver.url("/hook"))
    proc = DispatchProcess(config_dir, tmp_path / "state", extra_args=["--max-connections", "8"])
    processes.append(proc)
    held: list[socket.socket] = []
    try:
        held += [_producer(proc.socket_path, i) for i in range(2)]
        with unix_client(proc.socket_path) as third:
            assert _line(third) == {
                "ok": False,
                "error": "too many connections from this process (at most 2); retry later",
            }
        published = run_cli("publish", "--socket", str(proc.socket_path), input=event_line(payload={"n": 2}))
        assert published.returncode == 0, published.stderr
        assert json.loads(published.stdout.splitlines()[0])["ok"] is True
    finally:
        for c in held:
            c.close()
    received = receiver.wait_count("/hook", 3, timeout=60)
    assert sorted(r.json()["payload"]["n"] for r in received) == [0, 1, 2]
    assert "too many connections from this process" in proc.logs()


def test_metrics_port_connections_past_its_cap_get_503_and_healthz_recovers(
    tmp_path: Path, config_dir: Path, receiver: Receiver, processes: list[DispatchProcess]
) -> None:
    """With as many connections held on the ``--metrics`` port as it serves at once (each half a request),
    /healthz answers 503 "too many connections"; the refusal is counted, and once they close /healthz
    answers 200 again."""
    write_webhook(config_dir, "erp", receiver.url("/hook"))
    port = free_port()
    proc = DispatchProcess(config_dir, tmp_path / "state", extra_args=["--metrics", f"127.0.0.1:{port}"])
    processes.append(proc)
    held = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(STATUS_MAX_CONNECTIONS)]
    try:
        for c in held:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x")
        assert _healthz(port) == (503, "too many connections\n")
    finally:
        for c in held:
            c.close()

    def healthy() -> bool:
        return _healthz(port) == (200, "ok\n")

    wait_until(healthy)
    refused = _metric(port, 'dispatch_connections_refused_total{listener="status"}')
    assert refused is not None and refused >= 1
    assert proc.logs().count("connections.refused") >= 1
