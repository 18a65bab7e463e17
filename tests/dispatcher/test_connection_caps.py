"""Connection caps: past the cap a connection is refused at once and counted, the open ones keep working,
and a burst of refusals is logged once. Real sockets (a Unix socket, HTTP on 127.0.0.1), no timings."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.caps import ConnectionCap, PeerShares, RefusalLog, Refuser
from dispatcher.config import Snapshot
from dispatcher.ingest import Committer, Ingestor
from dispatcher.metrics import Metrics
from dispatcher.server import SocketServer
from dispatcher.status import StatusServer
from dispatcher.store.memory import MemoryStore
from reconciler.routing import build_routing_table
from tests.conftest import wait_until
from tests.dispatcher.intakes import NoIntake
from tests.loopback import unix_client

EVENT = b'{"event":{"type":"package.created"}}\n'


def test_refusals_are_reported_once_per_interval_with_the_count_since() -> None:
    """The first refusal of a burst is reported at once; the next ones within the interval are not, and the
    first one after it reports every refusal since the last report."""
    refusals = RefusalLog(interval_seconds=10.0)
    assert refusals.refused(100.0) == 1
    assert [refusals.refused(t) for t in (100.0, 101.0, 109.9)] == [None, None, None]
    assert refusals.refused(110.0) == 4
    assert refusals.refused(500.0) == 1


def test_the_cap_admits_up_to_its_limit_and_counts_each_refusal() -> None:
    """``limit`` connections are admitted, the next ones refused (each counted), and a release admits one
    more."""
    refused: list[int] = []
    cap = ConnectionCap("socket", 2, on_refused=lambda: refused.append(1))
    assert [cap.try_acquire() for _ in range(4)] == [True, True, False, False]
    assert len(refused) == 2 and cap.open == 2
    cap.release()
    assert cap.try_acquire() is True
    assert cap.try_acquire() is False and len(refused) == 3


def test_a_burst_of_refusals_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """Many refusals in a row log one warning naming the listener and the limit, not one per connection."""
    cap = ConnectionCap("status", 1, clock=lambda: 50.0)
    assert cap.try_acquire()
    with caplog.at_level(logging.WARNING, logger="dispatch"):
        for _ in range(20):
            assert not cap.try_acquire()
    [record] = [r for r in caplog.records if r.getMessage() == "connections.refused"]
    assert record.fields == {"listener": "status", "limit": 1, "refused": 1}  # type: ignore[attr-defined]


def test_a_cap_below_one_is_refused() -> None:
    """A cap of 0 would refuse everyone: it is a ValueError naming the value."""
    with pytest.raises(ValueError, match="got 0"):
        ConnectionCap("socket", 0)


# -- peer shares -----------------------------------------------------------------------------------------


def test_a_process_gets_a_quarter_of_the_cap_and_a_user_what_it_is_given() -> None:
    """With a cap of 8 and a user share of 6: a process is admitted twice, then refused saying so; another
    process of the same user gets its own two; the user is refused at six, whichever process asks."""
    assert (PeerShares(8).per_process, PeerShares(8).per_user) == (2, 8)  # a user: the whole cap by default
    shares = PeerShares(8, per_user=6)
    assert (shares.per_process, shares.per_user) == (2, 6)
    assert [shares.try_acquire(100, 1000) for _ in range(2)] == [None, None]
    assert shares.try_acquire(100, 1000) == "too many connections from this process (at most 2); retry later"
    for pid in (101, 101, 102, 102):
        assert shares.try_acquire(pid, 1000) is None
    assert shares.try_acquire(103, 1000) == "too many connections from this user (at most 6); retry later"
    assert shares.try_acquire(200, 2000) is None  # another user has its own share


def test_releasing_frees_the_share_and_forgets_the_peer() -> None:
    """A released connection makes room for the next one of that process; once every connection of a peer
    is closed nothing of it is kept (memory bounded by the connections open)."""
    shares = PeerShares(4)  # one per process
    assert shares.try_acquire(100, 1000) is None
    assert shares.try_acquire(100, 1000) is not None
    shares.release(100, 1000)
    assert shares.try_acquire(100, 1000) is None
    shares.release(100, 1000)
    assert shares.peers == (0, 0)


def test_unknown_credentials_are_only_under_the_cap_and_pid_0_only_under_its_users_share() -> None:
    """No credentials (not a Unix socket): never refused here. A pid of 0 (another PID namespace): no
    process share, the user's still holds."""
    shares = PeerShares(4, per_user=3)  # per process 1
    assert all(shares.try_acquire(None, None) is None for _ in range(10))
    assert [shares.try_acquire(0, 1000) for _ in range(3)] == [None, None, None]
    assert shares.try_acquire(0, 1000) == "too many connections from this user (at most 3); retry later"


def test_shares_are_never_above_the_cap_nor_a_process_above_its_user() -> None:
    """Flags set past the cap are the cap; a process share above the user's is the user's."""
    shares = PeerShares(8, per_process=50, per_user=20)
    assert (shares.per_process, shares.per_user) == (8, 8)
    assert PeerShares(8, per_process=6, per_user=3).per_process == 3


def test_refusals_for_a_process_share_give_the_listener_slot_back(tmp_path: Path) -> None:
    """On a real socket with a cap of 8 (2 per process): this process holds 2, is refused 12 times (more
    than the cap), and the listener still counts 2 open: a refusal never keeps a slot."""
    store = MemoryStore()
    snapshot = Snapshot(build_routing_table([], "rev-1"), {}, "rev-1")
    committer = Committer(store, time.time, NoIntake(), Metrics())
    ingestor = Ingestor(committer, lambda: snapshot, Metrics(), 1 << 20)
    server = SocketServer(tmp_path / "s.sock", ingestor, max_connections=8)
    server.start()
    held = [unix_client(server.path) for _ in range(2)]
    try:
        assert all(_ack(c)["ok"] is True for c in held)
        for _ in range(12):
            with unix_client(server.path) as extra:
                answer, _ = _refusal(extra)
            assert answer["error"] == "too many connections from this process (at most 2); retry later"
        assert server._cap.open == 2
        assert all(_ack(c)["ok"] is True for c in held)
    finally:
        for c in held:
            c.close()
        server.close()
        committer.close()


# -- the event socket ------------------------------------------------------------------------------------


@pytest.fixture
def socket_server(tmp_path: Path) -> Iterator[tuple[SocketServer, list[int]]]:
    store = MemoryStore()
    snapshot = Snapshot(build_routing_table([], "rev-1"), {}, "rev-1")
    committer = Committer(store, time.time, NoIntake(), Metrics())
    ingestor = Ingestor(committer, lambda: snapshot, Metrics(), 1 << 20)
    refused: list[int] = []
    # Every connection here comes from this one process: its share is the whole cap (shares: below).
    server = SocketServer(
        tmp_path / "s.sock",
        ingestor,
        max_connections=2,
        on_refused=lambda: refused.append(1),
        shares=PeerShares(2, per_process=2, per_user=2),
    )
    server.start()
    yield server, refused
    server.close()
    committer.close()


def _ack(sock: socket.socket) -> dict[str, object]:
    sock.sendall(EVENT)
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, "connection closed before the acknowledgement"
        line += chunk
    answer: dict[str, object] = json.loads(line)
    return answer


def _refusal(sock: socket.socket) -> tuple[dict[str, object], bytes]:
    """The one line a refused client reads, and what follows it (b"" once closed)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, "closed without a line"
        data += chunk
    try:
        rest = sock.recv(4096)
    except ConnectionResetError:
        rest = b""
    return json.loads(data), rest


def test_a_socket_client_past_the_cap_gets_one_refusal_line_and_is_closed(
    socket_server: tuple[SocketServer, list[int]],
) -> None:
    """With ``max_connections=2`` and two clients connected, a third reads one ``{"ok": false}`` line saying
    why (no ``line``: none was read), then end of stream; it is counted, and the two keep being served."""
    server, refused = socket_server
    held = [unix_client(server.path) for _ in range(2)]
    try:
        assert all(_ack(c)["ok"] is True for c in held)
        with unix_client(server.path) as extra:
            answer, rest = _refusal(extra)
        assert answer == {"ok": False, "error": "too many connections (at most 2); retry later"}
        assert rest == b"" and refused == [1]
        assert all(_ack(c)["ok"] is True for c in held)
    finally:
        for c in held:
            c.close()


def test_a_socket_slot_freed_by_a_closed_client_serves_the_next_one(
    socket_server: tuple[SocketServer, list[int]],
) -> None:
    """When a client at the cap disconnects, a new client is served again."""
    server, _ = socket_server
    held = [unix_client(server.path) for _ in range(2)]
    try:
        assert all(_ack(c)["ok"] is True for c in held)
        held.pop().close()

        def served() -> bool:
            """A new client's event is acknowledged (False while it is still refused)."""
            with unix_client(server.path) as again:
                try:
                    return _ack(again)["ok"] is True
                except (BrokenPipeError, ConnectionResetError):
                    return False  # refused: the line was written to a connection already closed

        wait_until(served)  # its handler notices the close a moment later
    finally:
        for c in held:
            c.close()


# -- the status port -------------------------------------------------------------------------------------


@pytest.fixture
def status_server() -> Iterator[tuple[StatusServer, Metrics]]:
    metrics = Metrics()
    server = StatusServer(
        ("127.0.0.1", 0),
        metrics,
        lambda: {},
        lambda: None,
        max_connections=2,
        idle_timeout_seconds=60.0,  # the held connections below stay open until the test closes them
    )
    server.start()
    yield server, metrics
    server.close()


def _get(port: int, path: str = "/healthz") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _refused_total(metrics: Metrics, listener: str) -> float:
    for line in metrics.render().decode().splitlines():
        if line.startswith(f'dispatch_connections_refused_total{{listener="{listener}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_status_connection_past_the_cap_is_answered_503_and_counted(
    status_server: tuple[StatusServer, Metrics],
) -> None:
    """With two connections held open (half a request each), a GET gets 503 at once; the refusal is counted
    in ``dispatch_connections_refused_total{listener="status"}``; once one is closed, GETs answer 200."""
    server, metrics = status_server
    port = server.address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
    try:
        for c in held:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x")
        assert _get(port) == (503, b"too many connections\n")
        assert _refused_total(metrics, "status") == 1
        held.pop().close()
        # The answer to a GET can reach it before its thread gives its slot back: of two GETs in a row the
        # second may still be refused, so the claim is that one answers 200 again.
        wait_until(lambda: _get(port) == (200, b"ok\n"))
    finally:
        for c in held:
            c.close()


def test_a_refused_connection_reads_its_answer_and_is_closed_later() -> None:
    """``Refuser``: the client reads the whole answer and then EOF even when it writes after the answer was
    sent (no reset); the socket is closed once ``linger_seconds`` have passed, or sooner when more than
    ``kept`` wait."""
    now = [100.0]
    refuser = Refuser(linger_seconds=1.0, kept=2, clock=lambda: now[0])
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        refuser.refuse(pairs[0][0], b"no room\n")
        pairs[0][1].sendall(b"a late request\n")
        assert pairs[0][1].recv(100) == b"no room\n"
        assert pairs[0][1].recv(100) == b""  # EOF, not a reset
        assert pairs[0][0].fileno() != -1  # kept open meanwhile
        refuser.refuse(pairs[1][0], b"no room\n")
        refuser.refuse(pairs[2][0], b"no room\n")  # three waiting, two kept: the oldest is closed
        assert pairs[0][0].fileno() == -1 and pairs[1][0].fileno() != -1
        now[0] += 1.5
        refuser.refuse(pairs[3][0], b"no room\n")  # a later refusal closes the expired ones
        assert pairs[1][0].fileno() == -1 and pairs[2][0].fileno() == -1
        refuser.close()
        assert pairs[3][0].fileno() == -1
        late = socket.socketpair()
        pairs.append(late)
        refuser.refuse(late[0], b"no room\n")  # after close(): closed at once
        assert late[0].fileno() == -1 and late[1].recv(100) == b"no room\n"
    finally:
        for a, b in pairs:
            a.close()
            b.close()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def status_log() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("dispatch.status")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_a_status_client_that_hangs_up_before_its_answer_leaves_no_traceback(
    capfd: pytest.CaptureFixture[str], status_log: _Records
) -> None:
    """A client that resets its connection before a large /status answer is written (a probe that timed out)
    makes the write fail; that prints no traceback on stderr, logs nothing, and the port answers the next
    request."""
    asked, hung_up = threading.Event(), threading.Event()

    def slow_status() -> dict[str, object]:
        asked.set()
        hung_up.wait(10)
        return {"padding": "x" * (4 << 20)}  # far more than the socket buffers take

    server = StatusServer(("127.0.0.1", 0), Metrics(), slow_status, lambda: None)
    server.start()
    try:
        port = server.address[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=20)
        client.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert asked.wait(10)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        client.close()
        hung_up.set()
        assert _get(port) == (200, b"ok\n")
        wait_until(lambda: server._server.cap.open == 0)  # the failed write's handler has returned
    finally:
        server.close()
    assert "Traceback" not in capfd.readouterr().err
    assert status_log.records == []


def test_an_error_answering_a_status_request_is_one_log_line_without_its_message(
    capfd: pytest.CaptureFixture[str], status_log: _Records
) -> None:
    """A bug while answering (here /status raising) is logged once, by place, without the exception's message
    (which could hold anything), and prints no traceback on stderr; the port answers the next request."""

    def broken_status() -> dict[str, object]:
        raise ValueError("hunter2")

    server = StatusServer(("127.0.0.1", 0), Metrics(), broken_status, lambda: None)
    server.start()
    try:
        port = server.address[1]
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            _get(port, "/status")
        assert _get(port) == (200, b"ok\n")
        wait_until(lambda: len(status_log.records) == 1)
    finally:
        server.close()
    assert "Traceback" not in capfd.readouterr().err
    [record] = status_log.records
    assert record.getMessage() == "status.request_failed"
    error = record.__dict__["fields"]["error"]
    assert "ValueError at" in error and "hunter2" not in error
