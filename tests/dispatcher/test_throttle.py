"""The rejected-input budget: a connection flooding bad lines is slowed, never cut off (good lines: free)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.ingest import Ingestor
from dispatcher.server import SocketServer, serve_stream, sleep_unless_hung_up
from dispatcher.throttle import MAX_WAIT_SECONDS, UID_FACTOR, PeerBudgets, RejectBudget, RejectLimits
from tests.conftest import wait_until
from tests.dispatcher.test_ingest import GatedStore, _ingestor, _line

LIMITS = RejectLimits(rate_bytes_per_second=1000, burst_bytes=5000, per_line_bytes=100)


def test_within_the_burst_nothing_waits() -> None:
    """Rejected input up to the burst costs no wait."""
    budget = RejectBudget(LIMITS, now=0.0)
    budget.charge(10, 4000, now=0.0)  # 4000 + 10 * 100 = the whole burst
    assert budget.wait_seconds(0.0) == 0.0


def test_overspending_waits_for_the_refill_and_no_longer() -> None:
    """Past the burst the wait is the debt over the rate (capped per call), and it shrinks as time passes."""
    budget = RejectBudget(LIMITS, now=0.0)
    budget.charge(1, 5200, now=0.0)  # 300 bytes past the burst
    assert budget.wait_seconds(0.0) == pytest.approx(0.3)
    assert budget.wait_seconds(0.2) == pytest.approx(0.1)
    assert budget.wait_seconds(0.3) == 0.0
    budget.charge(0, 100_000, now=0.3)
    assert budget.wait_seconds(0.3) == MAX_WAIT_SECONDS


def test_the_budget_refills_only_up_to_the_burst() -> None:
    """A long quiet spell does not bank more than one burst."""
    budget = RejectBudget(LIMITS, now=0.0)
    budget.charge(0, 6000, now=3600.0)  # an hour of refill is still only 5000
    assert budget.wait_seconds(3600.0) == pytest.approx(min(1.0, MAX_WAIT_SECONDS))  # 1000 bytes of debt


def test_limits_must_be_positive() -> None:
    """A zero rate or burst is refused with the bad value named."""
    with pytest.raises(ValueError, match="rate_bytes_per_second=0"):
        RejectLimits(rate_bytes_per_second=0)


class FakeTime:
    """A clock that moves only when something sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def ingest() -> Iterator[Ingestor]:
    store = GatedStore()
    store.gate.set()
    ingestor, committer = _ingestor(store)
    yield ingestor
    committer.close()
    store.close()


def _serve(ingestor: Ingestor, chunks: list[bytes], fake: FakeTime) -> list[dict[str, object]]:
    out: list[bytes] = []
    feed = iter([*chunks, b""])
    serve_stream(
        lambda: next(feed), out.append, ingestor, reject_limits=LIMITS, clock=fake.clock, sleep=fake.sleep
    )
    return [json.loads(line) for line in b"".join(out).splitlines()]


def test_a_stream_of_bad_lines_is_slowed_and_every_line_still_answered(ingest: Ingestor) -> None:
    """Bad lines past the budget make the reader wait (time an argument, no real sleep); each still gets its
    own rejection, and the connection is served to the end."""
    fake = FakeTime()
    bad = [b"{not json " + b"x" * 400 + b"}\n" for _ in range(40)]  # 40 * (411 + 100) bytes = 4 x the burst
    acks = _serve(ingest, bad, fake)
    assert [a["ok"] for a in acks] == [False] * 40
    assert [a["line"] for a in acks] == list(range(1, 41))
    assert sum(fake.slept) == pytest.approx((40 * 511 - 5000) / 1000, rel=0.05)


def test_good_lines_never_wait(ingest: Ingestor) -> None:
    """A well-behaved stream, however fast, is never slowed."""
    fake = FakeTime()
    good = [_line(f"{i:032x}") for i in range(200)]
    acks = _serve(ingest, good, fake)
    assert all(a["ok"] for a in acks) and len(acks) == 200
    assert fake.slept == []


def test_an_over_long_line_is_charged_for_every_byte_read(ingest: Ingestor) -> None:
    """An endless line costs what it made the dispatcher read, while it is being read, not only at its end."""
    fake = FakeTime()
    chunk = b"x" * 4000
    acks = _serve(ingest, [chunk] * 400 + [b"\n"], fake)  # 1.6 MB read, over the 1 MiB line limit
    assert [a["ok"] for a in acks] == [False]
    assert "too long" in str(acks[0]["error"])
    assert sum(fake.slept) > (1_600_000 - 5000) / 1000 * 0.9


def test_the_budget_is_per_connection(ingest: Ingestor) -> None:
    """One stream's overspending does not slow another: each has its own budget."""
    first, second = FakeTime(), FakeTime()
    _serve(ingest, [b"[bad\n" + b"y" * 6000 + b"\n"], first)
    assert first.slept
    _serve(ingest, [_line("ab" * 16)], second)
    assert second.slept == []


# -- budgets that follow the peer ------------------------------------------------------------------------


def test_a_processs_connections_share_one_budget() -> None:
    """A second connection from the same process starts with the debt the first one left: reconnecting
    does not refill the budget."""
    budgets = PeerBudgets(LIMITS)
    first = budgets.for_peer(4242, 1000, now=0.0)
    first.charge(1, 5900, now=0.0)  # 1000 bytes past the burst
    again = budgets.for_peer(4242, 1000, now=0.0)
    assert again.wait_seconds(0.0) == pytest.approx(min(1.0, MAX_WAIT_SECONDS))


def test_another_process_of_the_same_user_is_not_slowed_by_one_overspending() -> None:
    """One process past its budget (but within its user's) leaves the user's other processes unslowed."""
    budgets = PeerBudgets(LIMITS)
    budgets.for_peer(4242, 1000, now=0.0).charge(1, 9900, now=0.0)
    assert budgets.for_peer(4242, 1000, now=0.0).wait_seconds(0.0) > 0
    assert budgets.for_peer(4243, 1000, now=0.0).wait_seconds(0.0) == 0.0
    assert budgets.for_peer(4242, 1001, now=0.0).wait_seconds(0.0) == 0.0  # same pid, another user


def test_a_users_processes_together_get_at_most_uid_factor_budgets() -> None:
    """Starting a new process per connection does not escape the budget: past ``UID_FACTOR`` bursts spent
    by a user's processes, a fresh process of that user waits too."""
    budgets = PeerBudgets(LIMITS)
    for pid in range(UID_FACTOR + 1):
        budgets.for_peer(100 + pid, 1000, now=0.0).charge(1, 4900, now=0.0)  # one burst each
    fresh = budgets.for_peer(999, 1000, now=0.0)
    assert fresh.wait_seconds(0.0) == pytest.approx(min(MAX_WAIT_SECONDS, 5000 / (1000 * UID_FACTOR)))
    assert budgets.for_peer(999, 1001, now=0.0).wait_seconds(0.0) == 0.0


def test_an_invisible_pid_gets_a_process_budget_of_its_own_within_its_users() -> None:
    """Peers whose pid is 0 (in another PID namespace) do not share one process budget: each connection has
    its own, and their user's budget still bounds them together."""
    budgets = PeerBudgets(LIMITS)
    budgets.for_peer(0, 1000, now=0.0).charge(1, 5900, now=0.0)
    assert budgets.for_peer(0, 1000, now=0.0).wait_seconds(0.0) == 0.0
    for _ in range(UID_FACTOR):
        budgets.for_peer(0, 1000, now=0.0).charge(1, 4900, now=0.0)
    assert budgets.for_peer(0, 1000, now=0.0).wait_seconds(0.0) > 0


def test_unknown_credentials_get_a_budget_per_connection() -> None:
    """Without credentials (not a Unix socket) each connection has its own budget, as on stdin."""
    budgets = PeerBudgets(LIMITS)
    budgets.for_peer(None, None, now=0.0).charge(1, 9900, now=0.0)
    assert budgets.for_peer(None, None, now=0.0).wait_seconds(0.0) == 0.0


def test_the_peers_remembered_are_bounded() -> None:
    """However many processes and users connect, at most ``max_pids`` and ``max_uids`` budgets are kept,
    the least recently connected forgotten first."""
    budgets = PeerBudgets(LIMITS, max_pids=3, max_uids=2)
    for pid in range(50):
        budgets.for_peer(pid + 1, pid % 5, now=0.0)
    assert budgets.peers == (3, 2)
    budgets.for_peer(7, 7, now=0.0).charge(1, 5900, now=0.0)
    budgets.for_peer(8, 8, now=0.0)  # 7 is now the least recent of the users, still remembered
    assert budgets.for_peer(7, 7, now=0.0).wait_seconds(0.0) > 0


def test_reconnecting_to_the_socket_keeps_the_peers_debt(
    tmp_path: Path, ingest: Ingestor, caplog: pytest.LogCaptureFixture
) -> None:
    """On the real Unix socket, a client that overspends, disconnects and reconnects from the same process
    is throttled on its new connection by its first rejected line (a fresh budget would have let it pass)."""
    slow = RejectLimits(rate_bytes_per_second=100, burst_bytes=1000, per_line_bytes=100)
    server = SocketServer(tmp_path / "s.sock", ingest, budgets=PeerBudgets(slow))
    server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="dispatch"):
            for lines in ([b"[" + b"x" * 600 + b"\n"] * 2, [b"[bad\n"]):  # 400 bytes past, then 105 more
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.settimeout(20)
                    client.connect(str(server.path))
                    client.sendall(b"".join(lines))
                    reader = client.makefile("rb")
                    acks = [json.loads(reader.readline()) for _ in lines]
                assert [a["ok"] for a in acks] == [False] * len(lines)

            def throttled() -> int:
                return sum(r.getMessage() == "client.throttled" for r in caplog.records)

            wait_until(lambda: throttled() == 2)  # the first connection, then the second
    finally:
        server.close()


def test_a_throttled_connection_whose_client_left_frees_its_slot(tmp_path: Path, ingest: Ingestor) -> None:
    """A client that overspends by far (a debt of hours at this rate), reads its acks and closes: its
    handler stops waiting out the debt as soon as the client is gone and frees its connection slot (before,
    it held it until the debt was paid)."""
    glacial = RejectLimits(rate_bytes_per_second=1, burst_bytes=1, per_line_bytes=10_000)
    server = SocketServer(tmp_path / "s.sock", ingest, budgets=PeerBudgets(glacial), max_connections=4)
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(20)
            client.connect(str(server.path))
            client.sendall(b"[bad\n" * 3)
            reader = client.makefile("rb")
            assert [json.loads(reader.readline())["ok"] for _ in range(3)] == [False] * 3
            reader.close()
        wait_until(lambda: server._cap.open == 0)
    finally:
        server.close()


def test_the_wait_ends_early_only_when_the_peer_is_gone_with_nothing_left_to_read() -> None:
    """``sleep_unless_hung_up``: True at once when the peer closed and nothing is unread; when the peer
    shut down its writing half after sending more, the wait holds (what it sent is still to be read at the
    throttle's pace) and the answer is False."""
    gone, peer = socket.socketpair()
    left, sender = socket.socketpair()
    try:
        peer.close()
        done: list[bool] = []
        waiter = threading.Thread(target=lambda: done.append(sleep_unless_hung_up(gone, 600.0)), daemon=True)
        waiter.start()
        waiter.join(30)
        assert done == [True]

        sender.sendall(b"more input\n")
        sender.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        assert sleep_unless_hung_up(left, 0.2) is False
        assert time.monotonic() - started >= 0.2  # the whole wait, though the peer has shut down writing
        assert left.recv(64) == b"more input\n"  # still there to be read
    finally:
        for s in (gone, left, sender):
            s.close()
