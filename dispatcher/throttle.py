"""A budget for rejected input, per peer: a client that floods bad lines is slowed, never cut off.

Every rejected line costs its length in bytes plus a fixed ``per_line_bytes`` (an over-long line costs the
whole ``--max-line-bytes`` it made the dispatcher read). The budget refills at ``rate_bytes_per_second`` up to
``burst_bytes``; a connection that has spent more than that waits before its next read, for as long as the
refill takes. Good lines are free, so a well-behaved producer never waits (unless other processes of its
own user overspend the budget they share, below), and a producer with a bug still
gets every acknowledgement (at the budget's pace) instead of losing its connection. This bounds what one
hostile client can take from everyone else on two cores: the CPU of reading, scanning and rejecting its lines.

The budget follows the peer, not the connection, so reconnecting does not refill it (``PeerBudgets``): on
the Unix socket the kernel tells who connected (``SO_PEERCRED``), and a connection spends from two shared
buckets at once, waiting when either is overspent:

- its **process**'s (pid), at the limits above: reconnecting from the same process keeps the debt, and one
  process flooding garbage never slows another process's good lines;
- its **user**'s (uid), at ``UID_FACTOR`` times the limits: the uid is the identity a producer cannot shed
  (starting a new process per connection is cheap, changing uid is not), so however many processes a user
  starts, together they get at most ``UID_FACTOR`` MiB a second of rejected input.

The pid alone could be escaped by forking; the uid alone would let one buggy worker slow every worker of the
same user. A pid of 0 means the peer's process is not visible here (another PID namespace, e.g. the
producer's container in the same pod): then the process bucket is the connection's own, and the user's
still holds. Both maps are least-recently-used and bounded (``MAX_PIDS``, ``MAX_UIDS``): memory stays
bounded whatever connects, and an evicted entry only forgets a debt that the other bucket still bounds.

Time is an argument (``now``, monotonic seconds); the caller does the waiting.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import Protocol

#: What a connection may spend on rejected lines: 1 MiB a second, 4 MiB at once, 1 KiB per line on top.
DEFAULT_RATE_BYTES_PER_SECOND = 1 << 20
DEFAULT_BURST_BYTES = 4 << 20
DEFAULT_PER_LINE_BYTES = 1 << 10
#: Longest single wait, so that a connection being closed notices within this.
MAX_WAIT_SECONDS = 0.5
#: A user's processes together may spend this many times one process's budget.
UID_FACTOR = 4
#: Peers remembered at most (least recently connected forgotten first).
MAX_PIDS = 1024
MAX_UIDS = 256


@dataclass(frozen=True)
class RejectLimits:
    """How much rejected input a connection may send: a rate, a burst and a fixed cost per line."""

    rate_bytes_per_second: float = DEFAULT_RATE_BYTES_PER_SECOND
    burst_bytes: float = DEFAULT_BURST_BYTES
    per_line_bytes: int = DEFAULT_PER_LINE_BYTES

    def __post_init__(self) -> None:
        if self.rate_bytes_per_second <= 0 or self.burst_bytes <= 0 or self.per_line_bytes < 0:
            raise ValueError(f"reject limits must be positive, got {self!r}")


class Budget(Protocol):
    """What a connection's reader spends rejected input from and asks how long to wait."""

    def charge(self, rejected_lines: int, rejected_bytes: int, now: float) -> None: ...

    def wait_seconds(self, now: float) -> float: ...


class RejectBudget:
    """A token bucket of rejected-input bytes; thread-safe (connections of one peer share it)."""

    def __init__(self, limits: RejectLimits, now: float) -> None:
        self._limits = limits
        self._tokens = limits.burst_bytes
        self._at = now
        self._lock = threading.Lock()

    def charge(self, rejected_lines: int, rejected_bytes: int, now: float) -> None:
        """Spend the budget on rejected lines that were just read."""
        with self._lock:
            self._refill(now)
            self._tokens -= rejected_bytes + rejected_lines * self._limits.per_line_bytes

    def wait_seconds(self, now: float) -> float:
        """How long to wait before the next read: 0 while the budget is not overspent (at most
        ``MAX_WAIT_SECONDS``; ask again after waiting)."""
        with self._lock:
            self._refill(now)
            tokens = self._tokens
        if tokens > -1.0:  # less than a byte of debt: rounding, not overspending
            return 0.0
        return min(MAX_WAIT_SECONDS, -tokens / self._limits.rate_bytes_per_second)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._at = now
        refilled = self._tokens + elapsed * self._limits.rate_bytes_per_second
        self._tokens = min(self._limits.burst_bytes, refilled)


class _Both:
    """Spends from every bucket; waits as long as the most overspent one needs."""

    def __init__(self, *budgets: Budget) -> None:
        self._budgets = budgets

    def charge(self, rejected_lines: int, rejected_bytes: int, now: float) -> None:
        for budget in self._budgets:
            budget.charge(rejected_lines, rejected_bytes, now)

    def wait_seconds(self, now: float) -> float:
        return max(budget.wait_seconds(now) for budget in self._budgets)


class _Recent:
    """At most ``size`` budgets by key, the least recently used dropped first."""

    def __init__(self, limits: RejectLimits, size: int) -> None:
        self._limits = limits
        self._size = size
        self._budgets: OrderedDict[Hashable, RejectBudget] = OrderedDict()

    def get(self, key: Hashable, now: float) -> RejectBudget:
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = RejectBudget(self._limits, now)
            if len(self._budgets) > self._size:
                self._budgets.popitem(last=False)
        else:
            self._budgets.move_to_end(key)
        return budget

    def __len__(self) -> int:
        return len(self._budgets)


class PeerBudgets:
    """The rejected-input budgets of the socket's peers, shared by each peer's connections (see the module
    docstring). Thread-safe."""

    def __init__(
        self, limits: RejectLimits | None = None, *, max_pids: int = MAX_PIDS, max_uids: int = MAX_UIDS
    ) -> None:
        self.limits = limits or RejectLimits()
        uid_limits = replace(
            self.limits,
            rate_bytes_per_second=self.limits.rate_bytes_per_second * UID_FACTOR,
            burst_bytes=self.limits.burst_bytes * UID_FACTOR,
        )
        self._pids = _Recent(self.limits, max_pids)
        self._uids = _Recent(uid_limits, max_uids)
        self._lock = threading.Lock()

    def for_peer(self, pid: int | None, uid: int | None, now: float) -> Budget:
        """The budget a new connection from this peer spends from. ``None`` (credentials unknown: not a Unix
        socket) gives the connection a budget of its own; a ``pid`` of 0 (not visible here) a process
        bucket of its own, still within its user's."""
        if uid is None:
            return RejectBudget(self.limits, now)
        with self._lock:
            user = self._uids.get(uid, now)
            process = self._pids.get((uid, pid), now) if pid else RejectBudget(self.limits, now)
        return _Both(process, user)

    @property
    def peers(self) -> tuple[int, int]:
        """How many processes and users are remembered (bounded by ``max_pids`` and ``max_uids``)."""
        return len(self._pids), len(self._uids)
