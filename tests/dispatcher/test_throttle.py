"""The rejected-input budget: a connection flooding bad lines is slowed, never cut off (good lines: free)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from dispatcher.ingest import Ingestor
from dispatcher.server import serve_stream
from dispatcher.throttle import MAX_WAIT_SECONDS, RejectBudget, RejectLimits
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
