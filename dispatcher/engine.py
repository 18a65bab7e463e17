"""The delivery engine: builds its parts, owns their threads, and says whether it is running and idle.

Flow, one direction. New deliveries arrive already leased from ingest (``intake.admit``: no polling on the
hot path); due retries are leased from the store by the ``Scheduler`` into the same intake. Leases wait in
the ``EndpointQueues``; ``Worker`` threads take them round robin and attempt them through the ``Client``;
outcomes go to the ``OutcomeWriter``, which records them in batches and announces what became due to the
scheduler and stored callbacks to the ``CallbackSender``. A lease that is not recorded (crash) expires and
is reclaimed: at-least-once, duplicates only for attempts in flight at the crash.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable

from dispatcher.attempt import endpoint_key, without_attempt
from dispatcher.callback_sender import CallbackSender
from dispatcher.config import Snapshot
from dispatcher.intake import Intake
from dispatcher.logs import fields, get_logger
from dispatcher.metrics import Metrics
from dispatcher.outcomes import Done, OutcomeWriter
from dispatcher.queues import EndpointQueues
from dispatcher.scheduler import Scheduler
from dispatcher.settings import EngineSettings
from dispatcher.store.base import OutcomeKind, Store
from dispatcher.supervise import Spawn, start_thread
from dispatcher.worker import Client, Worker

__all__ = ["Client", "Engine", "EngineSettings"]

log = get_logger("engine")

#: Worker threads started with the engine; more start as attempts in flight need them (``Engine._grow``).
INITIAL_WORKERS = 8


def _share(
    store: Store, endpoint_of: Callable[[str], str | None], per_endpoint: int, wake: Callable[[], None]
) -> bool:
    """On a store shared by several dispatchers (PostgreSQL): hand it the per-endpoint limit, to hold
    across all of them, and listen for the work they make due. Returns whether the store is shared."""
    if not getattr(store, "shared", False):
        return False
    store.share_limits(endpoint_of, per_endpoint)  # type: ignore[attr-defined]
    store.listen(wake)  # type: ignore[attr-defined]
    return True


class Engine:
    """Owns the worker, writer, scheduler and callback threads. ``start()``, then ``stop()``."""

    def __init__(
        self,
        store: Store,
        client: Client,
        config: Callable[[], Snapshot],
        *,
        settings: EngineSettings | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.settings = s = settings or EngineSettings()
        self.metrics = metrics = metrics or Metrics()
        self.clock = clock
        rng = rng or random.Random()
        self._stopping = threading.Event()
        # Wake-ups for the callback sender: a time new callbacks were stored at, or None to stop.
        self._callbacks: queue.Queue[float | None] = queue.Queue()
        self.queues = EndpointQueues(s.per_endpoint, max_in_flight=s.workers)
        self.writer = OutcomeWriter(
            store,
            config,
            metrics,
            # Retries and releases recorded are the scheduler's next work: the one loop of the path, through
            # the store (the scheduler is built below, and the writer only calls it once running).
            on_due=lambda times: self.scheduler.wake_all(times),
            on_callbacks=self._callbacks.put,
            stopping=self._stopping,
            clock=clock,
        )
        self.intake = Intake(self.queues, config, s, self.writer.put, clock)
        self.scheduler = Scheduler(store, self.intake, s, clock)
        self.worker = Worker(client, config, self.writer.put, metrics, rng, clock)
        self.callback_sender = CallbackSender(
            store, client.send, config, metrics, lease_seconds=s.lease_seconds, clock=clock, rng=rng
        )
        self._threads: list[threading.Thread] = []
        self._spawn: Spawn = start_thread
        self._workers_started = 0
        self._grow_lock = threading.Lock()
        self._config = config
        # On a store shared by several dispatchers (PostgreSQL) the store holds the per-endpoint limit across
        # all of them and its NOTIFY wakes the scheduler ("due now": a time just past, not rounded up).
        self.scheduler.shared = _share(
            store, self._endpoint_of, s.per_endpoint, lambda: self.scheduler.wake(self.clock() - 0.1)
        )

    def _endpoint_of(self, webhook: str) -> str | None:
        """A webhook's endpoint key for the shared limit (None: not in this dispatcher's table)."""
        hook = self._config().webhook(webhook)
        return None if hook is None else endpoint_key(hook.target_url)

    def start(self, spawn: Spawn = start_thread) -> None:
        """Reclaim leases left by a previous process, then start the threads (through ``spawn``: the
        supervisor's, in ``dispatch run``)."""
        # Alone on its store, a dispatcher reclaims every lease left (they were its previous run's); on a
        # shared one only expired leases: the others' are live.
        ahead = 0.0 if self.scheduler.shared else self.settings.lease_seconds * 2
        reclaimed = self.store.reclaim_expired(self.clock() + ahead)
        if reclaimed:
            log.info("leases.reclaimed", extra=fields(count=reclaimed, at="start-up"))
        self.scheduler.next_reclaim = self.clock() + self.settings.reclaim_interval_seconds
        specs: list[tuple[str, Callable[[], None]]] = [
            ("writer", self.writer.run),
            ("scheduler", lambda: self.scheduler.run(self._stopping)),
            ("callbacks", lambda: self.callback_sender.run(self._stopping, self._callbacks)),
        ]
        self._spawn = spawn
        for name, target in specs:
            self._threads.append(spawn(f"dispatch-{name}", target))
        with self._grow_lock:
            for _ in range(min(self.settings.workers, INITIAL_WORKERS)):
                self._start_worker()

    def _start_worker(self) -> None:
        """One more worker thread (the caller holds ``_grow_lock``)."""
        name = f"dispatch-worker-{self._workers_started}"
        self._threads.append(self._spawn(name, lambda: self.worker.run(self.queues, self._grow)))
        self._workers_started += 1

    def _grow(self) -> None:
        """After a take: when every worker started is busy, start one more (up to ``settings.workers``), so
        one waits for the next lease. A worker is busy for a moment when it hands an attempt off to a client
        that completes it later (``ProcessClient.submit``), and for the whole attempt otherwise (a client
        that cannot, or a token to fetch first): threads cost memory waiting (``dispatcher.growing_pool``),
        so the dispatcher holds as many as were ever busy at once, plus one."""
        busy = self.worker.busy_threads
        if busy < self._workers_started or self._workers_started >= self.settings.workers:
            return  # read without the lock: a stale answer only delays growth to the next take
        with self._grow_lock:
            if (
                self.worker.busy_threads >= self._workers_started
                and self._workers_started < self.settings.workers
                and not self._stopping.is_set()
            ):
                self._start_worker()

    def stop(self, grace_seconds: float = 60.0) -> None:
        """Stop taking work, let attempts in flight finish (up to ``grace_seconds``), release the rest."""
        self._stopping.set()
        self.scheduler.wake()
        left = self.queues.close()
        now = self.clock()
        for lease in left:
            self.writer.put(Done(without_attempt(lease, OutcomeKind.RELEASE, next_attempt_at=now)))
        if not self.queues.wait_idle(grace_seconds):
            log.warning(
                "shutdown.inflight_abandoned", extra=fields(note="their leases expire and are retried")
            )
        self.writer.close()
        self._callbacks.put(None)
        deadline = time.monotonic() + 5.0  # one shared deadline, not one per thread
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    @property
    def workers_started(self) -> int:
        """Worker threads started so far (at most ``settings.workers``)."""
        return self._workers_started

    def is_running(self) -> bool:
        """Every engine thread is alive (for /healthz)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def is_idle(self) -> bool:
        """No lease queued, none in flight, no outcome waiting to be written."""
        return self.queues.size == 0 and self.queues.busy == 0 and self.writer.unwritten == 0

    def has_due_work(self) -> bool:
        """Whether anything is due in the store now, callbacks included, or callbacks are being sent (used to
        finish up at EOF in --stdin mode)."""
        now = self.clock()
        due = self.store.next_due_at()
        if due is not None and due <= now:
            return True
        callback_due = self.store.next_callback_due_at()
        return self.callback_sender.busy or (callback_due is not None and callback_due <= now)
