"""A budget for rejected input, per connection: a client that floods bad lines is slowed, never cut off.

Every rejected line costs its length in bytes plus a fixed ``per_line_bytes`` (an over-long line costs the
whole ``--max-line-bytes`` it made the dispatcher read). The budget refills at ``rate_bytes_per_second`` up to
``burst_bytes``; a connection that has spent more than that waits before its next read, for as long as the
refill takes. Good lines are free, so a well-behaved producer never waits, and a producer with a bug still
gets every acknowledgement (at the budget's pace) instead of losing its connection. This bounds what one
hostile client can take from everyone else on two cores: the CPU of reading, scanning and rejecting its lines.

Pure: time is an argument (``now``, monotonic seconds); the caller does the waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What a connection may spend on rejected lines: 1 MiB a second, 4 MiB at once, 1 KiB per line on top.
DEFAULT_RATE_BYTES_PER_SECOND = 1 << 20
DEFAULT_BURST_BYTES = 4 << 20
DEFAULT_PER_LINE_BYTES = 1 << 10
#: Longest single wait, so that a connection being closed notices within this.
MAX_WAIT_SECONDS = 0.5


@dataclass(frozen=True)
class RejectLimits:
    """How much rejected input a connection may send: a rate, a burst and a fixed cost per line."""

    rate_bytes_per_second: float = DEFAULT_RATE_BYTES_PER_SECOND
    burst_bytes: float = DEFAULT_BURST_BYTES
    per_line_bytes: int = DEFAULT_PER_LINE_BYTES

    def __post_init__(self) -> None:
        if self.rate_bytes_per_second <= 0 or self.burst_bytes <= 0 or self.per_line_bytes < 0:
            raise ValueError(f"reject limits must be positive, got {self!r}")


class RejectBudget:
    """One connection's token bucket of rejected-input bytes (not thread-safe: one reader per connection)."""

    def __init__(self, limits: RejectLimits, now: float) -> None:
        self._limits = limits
        self._tokens = limits.burst_bytes
        self._at = now

    def charge(self, rejected_lines: int, rejected_bytes: int, now: float) -> None:
        """Spend the budget on rejected lines that were just read."""
        self._refill(now)
        self._tokens -= rejected_bytes + rejected_lines * self._limits.per_line_bytes

    def wait_seconds(self, now: float) -> float:
        """How long to wait before the next read: 0 while the budget is not overspent (at most
        ``MAX_WAIT_SECONDS``; ask again after waiting)."""
        self._refill(now)
        if self._tokens > -1.0:  # less than a byte of debt: rounding, not overspending
            return 0.0
        return min(MAX_WAIT_SECONDS, -self._tokens / self._limits.rate_bytes_per_second)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._at = now
        refilled = self._tokens + elapsed * self._limits.rate_bytes_per_second
        self._tokens = min(self._limits.burst_bytes, refilled)
