"""The intake: where leases enter the endpoint queues, from ingest (new deliveries) and the scheduler (due).

Before a commit the committer asks ``plan`` whether to create the new deliveries leased (the engine has room)
and which webhooks' deliveries to leave unleased (their endpoint queue is full: they wait in the store for
the scheduler). After it, ``admit`` queues the leases the store returned. A lease that does not fit (its
endpoint filled up meanwhile, or the queues are closed) goes back to the store through the outcome writer,
due now: the scheduler passes it over until that endpoint drains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dispatcher.attempt import endpoint_key, without_attempt
from dispatcher.config import Snapshot
from dispatcher.outcomes import Done
from dispatcher.queues import EndpointQueues
from dispatcher.settings import EngineSettings
from dispatcher.store.base import Lease, OutcomeKind

#: Where a lease goes when its webhook no longer exists (the worker buries it, nothing is sent).
NO_ENDPOINT = "-"


@dataclass(frozen=True)
class Admission:
    """How the next commit creates its deliveries: leased for ``lease_seconds`` (None: all unleased), except
    those to the webhooks in ``unleased``."""

    lease_seconds: float | None
    unleased: frozenset[str] = frozenset()


#: Every delivery created unleased, for the scheduler (no engine, or no room in it).
UNLEASED = Admission(None)


class Intake:
    """Decides leased or unleased for new deliveries, and admits leases into the endpoint queues."""

    def __init__(
        self,
        queues: EndpointQueues,
        config: Callable[[], Snapshot],
        settings: EngineSettings,
        release: Callable[[Done], None],
        clock: Callable[[], float],
    ) -> None:
        self._queues = queues
        self._config = config
        self._settings = settings
        self._release = release
        self._clock = clock
        self._endpoint_hooks: tuple[Snapshot | None, dict[str, list[str]]] = (None, {})
        # Each webhook's endpoint key, worked out once per snapshot (plan and admit both need it).
        self._keys: tuple[Snapshot | None, dict[str, str]] = (None, {})

    def plan(self, webhooks: Sequence[str]) -> Admission:
        """Lease the new deliveries of one commit (``webhooks``: one name per delivery) when they all fit in
        memory, except those whose endpoint queue is full."""
        if not webhooks or self.room() < len(webhooks):
            return UNLEASED
        snapshot = self._config()
        full = set()
        for name in set(webhooks):
            key = self._key(snapshot, name)
            if key != NO_ENDPOINT and self._queued_fraction(key) >= 1.0:
                full.add(name)
        return Admission(self._settings.lease_seconds, frozenset(full))

    def admit(self, leases: Iterable[Lease]) -> int:
        """Queue leased deliveries for attempts now; returns how many were queued. Those of an endpoint whose
        queue is full go back to the store, due now: the scheduler passes them over until it drains."""
        snapshot = self._config()
        now = self._clock()
        queued = 0
        for lease in leases:
            key = self._key(snapshot, lease.webhook)
            if self._queued_fraction(key) < 1.0 and self._queues.put(key, lease):
                queued += 1
            else:  # full, or stopping (due again at once for the next process)
                self._release(Done(without_attempt(lease, OutcomeKind.RELEASE, next_attempt_at=now)))
        return queued

    def room(self) -> int:
        """How many more leases the queues will hold in memory right now."""
        return self._settings.max_queued - self._queues.size

    def full_endpoints(self) -> frozenset[str]:
        """Endpoints with at least half their queue's worth waiting in memory (the scheduler passes them
        over: their backlog stays in the store, neither leased and released again and again, nor in the way
        of every other endpoint's due work)."""
        return frozenset(
            key for key, n in self._queues.queued_by_endpoint().items() if n >= 0.5 * self._queue_cap(key)
        )

    def webhooks_at(self, endpoints: frozenset[str]) -> list[str]:
        """The names of the current webhooks that deliver to these endpoints."""
        if not endpoints:
            return []
        snapshot = self._config()
        cached, by_endpoint = self._endpoint_hooks
        if cached is not snapshot:
            by_endpoint = {}
            for name, hook in snapshot.table.webhooks.items():
                by_endpoint.setdefault(endpoint_key(hook.target_url), []).append(name)
            self._endpoint_hooks = (snapshot, by_endpoint)
        return [name for key in endpoints for name in by_endpoint.get(key, ())]

    def _key(self, snapshot: Snapshot, webhook: str) -> str:
        """The endpoint key of a webhook in this snapshot (``NO_ENDPOINT`` when it has none)."""
        cached, keys = self._keys
        if cached is not snapshot:  # a new snapshot: a new map (another thread may still fill the old one)
            keys = {}
            self._keys = (snapshot, keys)
        key = keys.get(webhook)
        if key is None:
            hook = snapshot.webhook(webhook)
            key = keys[webhook] = endpoint_key(hook.target_url) if hook is not None else NO_ENDPOINT
        return key

    def _queue_cap(self, key: str) -> int:
        """An endpoint's queue size: a failing endpoint (one slot) needs far fewer leases waiting."""
        s = self._settings
        return s.failing_endpoint_queued if self._queues.is_failing(key) else s.per_endpoint_queued

    def _queued_fraction(self, key: str) -> float:
        return self._queues.queued(key) / self._queue_cap(key)
