"""The delivery engine: endpoint queues, worker threads, a batching outcome writer and a retry scheduler.

Flow. New deliveries arrive already leased from ingest (``submit``: no polling on the hot path). Due retries
are leased from the store by the scheduler, which sleeps until the earliest due time or until woken. Leases
wait in per-endpoint queues; a worker takes the next endpoint whose in-flight count is under its limit
(round robin), so a slow endpoint only ever occupies its own slots. Outcomes go to one writer thread that
records them in batches (one transaction each). A lease that is not recorded (crash) expires and is
reclaimed: at-least-once, duplicates only for attempts in flight at the crash.
"""

from __future__ import annotations

import heapq
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from dispatcher.attempt import Decision, decide, endpoint_key, prepare, without_attempt
from dispatcher.callback_sender import CallbackSender
from dispatcher.callbacks import build_callback, new_callback_id
from dispatcher.config import Snapshot
from dispatcher.errors import DeliveryError, SecretError, StoreError
from dispatcher.logs import fields, get_logger
from dispatcher.metrics import Metrics
from dispatcher.outbound import OutboundRequest
from dispatcher.store.base import AttemptRecord, Lease, Outcome, OutcomeKind, Store
from dispatcher.supervise import Spawn, start_thread
from reconciler.model import TokenAuth, Webhook

log = get_logger("engine")


class Client(Protocol):
    """What the engine needs from HTTP (``dispatcher.http.HttpClient``; tests pass a fake)."""

    def send(self, request: OutboundRequest) -> AttemptRecord: ...

    def fetch_token(self, auth: TokenAuth, password: str, timeout_seconds: float) -> str: ...

    def post_json(self, url: str, payload: dict[str, Any], timeout_seconds: float) -> AttemptRecord: ...


#: Where a lease goes when its webhook no longer exists (it is buried, not sent).
_NO_ENDPOINT = "-"
#: How long the scheduler waits, at first and at most, for a full endpoint to drain when the only due work is
#: theirs (each lease then steps over their backlog in the store: not free when it is large).
_HOLD_MIN_SECONDS = 1.0
_HOLD_MAX_SECONDS = 5.0
_ANNOUNCED_MAX = 10_000


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


class EndpointQueues:
    """Per-endpoint FIFO queues with a per-endpoint in-flight limit, taken round robin by workers.

    An endpoint whose last attempt failed without a useful answer (timeout, connection error, 5xx, 429) is
    limited to one attempt at a time until an attempt succeeds: a dead endpoint then holds one worker, not
    ``per_endpoint`` of them, so many dead endpoints cannot take every worker from the healthy ones. An
    endpoint that has not answered yet (new, or since start-up) starts the same way, with one slot until its
    first healthy answer: a handful of receivers that stall from the first byte cannot take every worker for
    a whole timeout before they are known to fail.
    """

    def __init__(self, per_endpoint: int) -> None:
        self._limit = per_endpoint
        self._failing: set[str] = set()
        self._proven: set[str] = set()  # endpoints that have answered healthy at least once
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Lease]] = {}
        self._inflight: dict[str, int] = {}
        self._ready: deque[str] = deque()
        self._is_ready: set[str] = set()
        self._size = 0
        self._busy = 0
        self._closed = False

    def put(self, key: str, lease: Lease) -> bool:
        """Queue a lease; False once closed (the caller releases it)."""
        with self._cond:
            if self._closed:
                return False
            self._queues.setdefault(key, deque()).append(lease)
            self._size += 1
            self._mark_ready(key)
            return True

    def is_failing(self, key: str) -> bool:
        return key in self._failing

    def queued(self, key: str) -> int:
        with self._cond:
            q = self._queues.get(key)
            return len(q) if q else 0

    def queued_by_endpoint(self) -> dict[str, int]:
        """How many leases wait, per endpoint that has any."""
        with self._cond:
            return {key: len(q) for key, q in self._queues.items()}

    def take(self, timeout: float | None = None) -> tuple[str, Lease] | None:
        """The next lease whose endpoint has a free slot; None when closed (or on timeout)."""
        with self._cond:
            while not self._ready or self._closed:
                if self._closed or not self._cond.wait(timeout):
                    return None
            key = self._ready.popleft()
            self._is_ready.discard(key)
            q = self._queues[key]
            lease = q.popleft()
            if not q:
                del self._queues[key]
            self._size -= 1
            self._busy += 1
            self._inflight[key] = self._inflight.get(key, 0) + 1
            self._mark_ready(key)
            return key, lease

    def done(self, key: str, healthy: bool = True) -> None:
        with self._cond:
            if healthy:
                self._failing.discard(key)
                self._proven.add(key)
            else:
                self._failing.add(key)
            self._busy -= 1
            left = self._inflight[key] - 1
            if left:
                self._inflight[key] = left
            else:
                del self._inflight[key]
            self._mark_ready(key)
            if not self._busy:
                self._cond.notify_all()  # wait_idle(); otherwise waking every worker is a thundering herd

    def _mark_ready(self, key: str) -> None:
        limit = self._limit if key in self._proven and key not in self._failing else 1
        if key not in self._is_ready and key in self._queues and self._inflight.get(key, 0) < limit:
            self._ready.append(key)
            self._is_ready.add(key)
            self._cond.notify()

    @property
    def size(self) -> int:
        return self._size

    @property
    def busy(self) -> int:
        return self._busy

    def close(self) -> list[Lease]:
        """Stop handing out work; returns the leases still queued (to be released)."""
        with self._cond:
            self._closed = True
            left = [lease for q in self._queues.values() for lease in q]
            self._queues.clear()
            self._ready.clear()
            self._is_ready.clear()
            self._size = 0
            self._cond.notify_all()
            return left

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no attempt is in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


@dataclass(frozen=True)
class _Done:
    outcome: Outcome
    hook: Webhook | None = None
    lease: Lease | None = None
    decision: Decision | None = None


@dataclass(frozen=True)
class EngineSettings:
    workers: int = 64
    per_endpoint: int = 8
    lease_seconds: float = 120.0  # longer than the 60 s timeout ceiling plus queueing
    max_queued: int = 20_000  # leases held in memory at most (bounds memory and lease age)
    per_endpoint_queued: int = 2_000  # beyond this an endpoint's new leases go back to the store
    failing_endpoint_queued: int = 100  # the same for an endpoint whose last attempt failed (one slot)
    reclaim_interval_seconds: float = 15.0
    lease_batch: int = 500


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
        self.client = client
        self.config = config
        self.settings = s = settings or EngineSettings()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.rng = rng or random.Random()
        self.queues = EndpointQueues(s.per_endpoint)
        self._outcomes: queue.Queue[_Done | None] = queue.Queue()
        # Wake-ups for the callback sender: a time new callbacks were stored at, or None to stop.
        self._callbacks: queue.Queue[float | None] = queue.Queue()
        self.callback_sender = CallbackSender(
            store,
            lambda r: self.client.send(r),
            config,
            self.metrics,
            lease_seconds=s.lease_seconds,
            clock=clock,
            rng=self.rng,
        )
        self._unwritten = 0  # outcomes handed to the writer and not yet recorded
        self._unwritten_lock = threading.Lock()
        self._wake = threading.Condition()
        self._announced: list[float] = []  # a heap: the times new due work was announced for (wake())
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_reclaim = 0.0
        # After a lease that found nothing but the due work of endpoints with enough queued: those endpoints,
        # and until when to wait for one of them to drain (or for announced work to come due) before leasing.
        self._hold: tuple[frozenset[str], float] | None = None
        self._hold_seconds = _HOLD_MIN_SECONDS
        self._endpoint_hooks: tuple[Snapshot | None, dict[str, list[str]]] = (None, {})
        self._debug = log.isEnabledFor(10)
        # A store's wake-up means "due now": a time just past, so it is not rounded up to the next 0.1 s.
        self._shared = _share(store, self._endpoint_of, s.per_endpoint, lambda: self.wake(self.clock() - 0.1))

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, spawn: Spawn = start_thread) -> None:
        """Reclaim leases left by a previous process, then start the threads (through ``spawn``: the
        supervisor's, in ``dispatch run``)."""
        # Alone on its store, a dispatcher reclaims every lease left (they were its previous run's); on a
        # shared one only expired leases: the others' are live.
        ahead = 0.0 if self._shared else self.settings.lease_seconds * 2
        reclaimed = self.store.reclaim_expired(self.clock() + ahead)
        if reclaimed:
            log.info("leases.reclaimed", extra=fields(count=reclaimed, at="start-up"))
        self._next_reclaim = self.clock() + self.settings.reclaim_interval_seconds
        specs: list[tuple[str, Callable[[], None]]] = [
            ("writer", self._writer),
            ("scheduler", self._scheduler),
        ]
        specs.append(("callbacks", self._callback_sender))
        specs.extend((f"worker-{i}", self._worker) for i in range(self.settings.workers))
        for name, target in specs:
            self._threads.append(spawn(f"dispatch-{name}", target))

    def stop(self, grace_seconds: float = 60.0) -> None:
        """Stop taking work, let attempts in flight finish (up to ``grace_seconds``), release the rest."""
        self._stopping.set()
        self.wake()
        left = self.queues.close()
        now = self.clock()
        for lease in left:
            self._put(_Done(without_attempt(lease, OutcomeKind.RELEASE, next_attempt_at=now)))
        if not self.queues.wait_idle(grace_seconds):
            log.warning(
                "shutdown.inflight_abandoned", extra=fields(note="their leases expire and are retried")
            )
        self._outcomes.put(None)
        self._callbacks.put(None)
        deadline = time.monotonic() + 5.0  # one shared deadline, not one per thread
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    # -- hot path ----------------------------------------------------------------------------------------

    def behind(self, webhooks: Iterable[str]) -> set[str]:
        """Those of these webhooks whose endpoint queue is full: ingest creates their new deliveries
        unleased (they wait in the store for the scheduler) and hands the others over leased."""
        snapshot = self.config()
        full: set[str] = set()
        for name in set(webhooks):
            hook = snapshot.webhook(name)
            if hook is not None and self._queued_fraction(endpoint_key(hook.target_url)) >= 1.0:
                full.add(name)
        return full

    def _queue_cap(self, key: str) -> int:
        """An endpoint's queue size: a failing endpoint (one slot) needs far fewer leases waiting."""
        s = self.settings
        return s.failing_endpoint_queued if self.queues.is_failing(key) else s.per_endpoint_queued

    def _queued_fraction(self, key: str) -> float:
        return self.queues.queued(key) / self._queue_cap(key)

    def _webhooks_at(self, endpoints: frozenset[str]) -> list[str]:
        """The names of the current webhooks that deliver to these endpoints."""
        if not endpoints:
            return []
        snapshot = self.config()
        cached, by_endpoint = self._endpoint_hooks
        if cached is not snapshot:
            by_endpoint = {}
            for name, hook in snapshot.table.webhooks.items():
                by_endpoint.setdefault(endpoint_key(hook.target_url), []).append(name)
            self._endpoint_hooks = (snapshot, by_endpoint)
        return [name for key in endpoints for name in by_endpoint.get(key, ())]

    def room(self) -> int:
        """How many more leases the engine will hold in memory right now."""
        return self.settings.max_queued - self.queues.size

    def submit(self, leases: Iterable[Lease]) -> int:
        """Queue leased deliveries for attempts now; returns how many were queued. Those of an endpoint whose
        queue is full go back to the store, due now: the scheduler passes them over until it drains."""
        snapshot = self.config()
        now = self.clock()
        queued = 0
        for lease in leases:
            hook = snapshot.webhook(lease.webhook)
            key = endpoint_key(hook.target_url) if hook is not None else _NO_ENDPOINT
            if self._queued_fraction(key) < 1.0 and self.queues.put(key, lease):
                queued += 1
            else:  # full, or stopping (due again at once for the next process)
                self._put(_Done(without_attempt(lease, OutcomeKind.RELEASE, next_attempt_at=now)))
        return queued

    def wake(self, at: float | None = None) -> None:
        """Make the scheduler look at the store at ``at`` (default: now), when new work is due then (a retry
        was scheduled, work was requeued or released)."""
        self.wake_all([self.clock() if at is None else at])

    def wake_all(self, times: Iterable[float]) -> None:
        """``wake`` at each of these times."""
        with self._wake:
            earliest = self._announced[0] if self._announced else float("inf")
            for at in {math.ceil(t * 10) / 10 for t in times}:  # to the next 0.1 s: fewer distinct times
                heapq.heappush(self._announced, at)
            if len(self._announced) > _ANNOUNCED_MAX:  # keep the earliest; a hold ends within 5 s anyway
                self._announced = heapq.nsmallest(_ANNOUNCED_MAX // 2, self._announced)
            if self._announced and self._announced[0] < earliest:
                self._wake.notify()

    def is_running(self) -> bool:
        """Every engine thread is alive (for /healthz)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def is_idle(self) -> bool:
        """No lease queued, none in flight, no outcome waiting to be written."""
        with self._unwritten_lock:
            unwritten = self._unwritten
        return self.queues.size == 0 and self.queues.busy == 0 and unwritten == 0

    def has_due_work(self) -> bool:
        """Whether anything is due in the store now, callbacks included, or callbacks are being sent (used to
        finish up at EOF in --stdin mode)."""
        now = self.clock()
        due = self.store.next_due_at()
        if due is not None and due <= now:
            return True
        callback_due = self.store.next_callback_due_at()
        return self.callback_sender.busy or (callback_due is not None and callback_due <= now)

    # -- scheduler -----------------------------------------------------------------------------------------

    def run_once(self, now: float) -> float | None:
        """One scheduler step: reclaim expired leases when due, lease due deliveries into the queues.

        Returns when to run again (None: only when woken or at the next reclaim).
        """
        s = self.settings
        if now >= self._next_reclaim:
            n = self.store.reclaim_expired(now)
            if n:
                log.info("leases.reclaimed", extra=fields(count=n))
                self._hold = None  # due again now
            self._next_reclaim = now + s.reclaim_interval_seconds
        # Endpoints with at least half their queue's worth waiting in memory are passed over by the lease:
        # their backlog stays in the store, so a dead endpoint's thousands of due deliveries are neither
        # leased and released again and again, nor in the way of every other endpoint's due work.
        full = frozenset(
            key for key, n in self.queues.queued_by_endpoint().items() if n >= 0.5 * self._queue_cap(key)
        )
        announced = False  # work announced by wake() that is due by now ends a hold
        with self._wake:
            while self._announced and self._announced[0] <= now:
                heapq.heappop(self._announced)
                announced = True
        if self._hold is not None:
            keys, until = self._hold
            if now < until and not announced and keys <= full:
                return min(until, now + 0.05)  # nothing new since a fruitless lease; none of them drained
            self._hold = None
        room = self.room()
        if room <= 0:
            return now + 0.05  # queues full: look again shortly
        limit = min(room, s.lease_batch)
        leases = self.store.lease(now, limit, s.lease_seconds, self._webhooks_at(full))
        if leases:
            self.submit(leases)
        if len(leases) == limit:
            self._hold_seconds = _HOLD_MIN_SECONDS
            return now  # there may be more due right now
        if full:
            # What is due now may be only the full endpoints' backlog (the store's next due time would say
            # "now" forever): wait for one of them to drain, a wake, or a while, and back off when idle.
            self._hold = (full, now + self._hold_seconds)
            self._hold_seconds = (
                _HOLD_MIN_SECONDS if leases else min(_HOLD_MAX_SECONDS, self._hold_seconds * 2)
            )
            return now + 0.05
        self._hold_seconds = _HOLD_MIN_SECONDS
        due = self.store.next_due_at()
        if self._shared and due is not None and due <= now:
            return None  # due but over the shared endpoint limits: a NOTIFY (a freed slot) wakes us
        return due

    def _endpoint_of(self, webhook: str) -> str | None:
        """A webhook's endpoint key for the shared limit (None: removed, it is buried, not sent)."""
        hook = self.config().webhook(webhook)
        return None if hook is None else endpoint_key(hook.target_url)

    def _scheduler(self) -> None:
        while not self._stopping.is_set():
            now = self.clock()
            try:
                next_at = self.run_once(now)
            except StoreError:
                log.exception("scheduler.store_error")
                next_at = now + 1.0
            wake_at = min(next_at if next_at is not None else float("inf"), self._next_reclaim)
            # At most a second: work requeued by another process (`dispatch deliveries retry`) shows up in the
            # store without waking us; new events never wait for this (they are submitted directly).
            with self._wake:
                announced = self._announced[0] if self._announced else float("inf")
                timeout = min(1.0, max(0.0, min(wake_at, announced) - self.clock()))
                if timeout > 0:
                    self._wake.wait(timeout)

    # -- workers -------------------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            item = self.queues.take()
            if item is None:
                return
            key, lease = item
            healthy = True
            try:
                healthy = self._handle(lease)
            except Exception:
                # A bug must not kill the worker; the lease expires and the delivery is retried.
                log.exception("worker.unexpected_error", extra=fields(delivery=lease.delivery_id))
            finally:
                self.queues.done(key, healthy)

    def _handle(self, lease: Lease) -> bool:
        """Handle one lease; returns whether the endpoint looked healthy (answered, and not 5xx/429)."""
        now = self.clock()
        if lease.expires_at <= now:
            return True  # the store will reclaim it; attempting now could race another holder
        snapshot = self.config()
        hook = snapshot.webhook(lease.webhook)
        if hook is None:
            self._put(_Done(without_attempt(lease, OutcomeKind.DEAD, reason="webhook removed"), lease=lease))
            return True
        if not hook.active:
            self._put(_Done(without_attempt(lease, OutcomeKind.HOLD), hook, lease))
            return True
        try:
            record = self._attempt(lease, hook, snapshot, now)
            sent = True
        except SecretError as exc:
            # A refused or unresolvable secret is this webhook's failed attempt (retried, dead at the end,
            # with the reason: the reference, never a value), not a bug.
            self.metrics.secret_errors.inc()
            record = AttemptRecord(started_at=now, duration_seconds=0.0, error=str(exc))
            sent = False
        else:
            self.metrics.attempt_duration.observe(record.duration_seconds)
        decision = decide(lease, hook, record, self.rng, self.clock())
        self._put(_Done(decision.outcome, hook, lease, decision))
        if not sent:
            return True  # nothing was sent: the endpoint is not to blame
        code = record.status_code
        return code is not None and code < 500 and code != 429

    def _attempt(self, lease: Lease, hook: Webhook, snapshot: Snapshot, now: float) -> AttemptRecord:
        """Make the HTTP attempt; SecretError (before anything is sent) when a secret it needs is missing.

        ``config.timeout`` bounds the whole attempt: after a token request, the POST gets what is left."""
        token: str | None = None
        timeout = hook.timeout_seconds
        if isinstance(hook.auth, TokenAuth):
            started = time.monotonic()
            try:
                raw = self.client.fetch_token(hook.auth, snapshot.secret(hook.auth.password), timeout)
            except DeliveryError as exc:
                return AttemptRecord(started_at=now, duration_seconds=0.0, error=str(exc))
            token = hook.auth.header_format.format(raw)
            timeout -= time.monotonic() - started
            if timeout <= 0:
                error = f"timed out: the token request took the whole {hook.timeout_seconds:g}s"
                return AttemptRecord(started_at=now, duration_seconds=hook.timeout_seconds, error=error)
        request = prepare(lease, hook, snapshot, int(now), token)
        if timeout < request.timeout_seconds:
            request = replace(request, timeout_seconds=timeout)
        return self.client.send(request)

    # -- outcomes ------------------------------------------------------------------------------------------

    def _put(self, done: _Done) -> None:
        with self._unwritten_lock:
            self._unwritten += 1
        self._outcomes.put(done)

    def _writer(self) -> None:
        stop = False
        while not stop:
            first = self._outcomes.get()
            batch: list[_Done] = []
            if first is None:
                stop = True
            else:
                batch.append(first)
            while len(batch) < 1000:
                try:
                    more = self._outcomes.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    continue
                batch.append(more)
            if batch:
                self._write(batch)

    def _write(self, batch: list[_Done]) -> None:
        now = self.clock()
        snapshot = self.config()
        outcomes = [self._with_callback(d, self._recheck_hold(d, snapshot, now), now) for d in batch]
        try:
            self._record(outcomes, now)
        finally:
            with self._unwritten_lock:
                self._unwritten -= len(batch)
        due_times: list[float] = []  # retries and releases recorded: due work for the scheduler, then
        for done, outcome in zip(batch, outcomes, strict=True):
            kind = outcome.kind
            self.metrics.deliveries.labels(kind.value if kind is not OutcomeKind.RETRY else "retry").inc()
            if kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE):
                due_times.append(now if outcome.next_attempt_at is None else outcome.next_attempt_at)
            self._log_outcome(done)
        if due_times:
            self.wake_all(due_times)
        if any(o.callback is not None for o in outcomes):
            self._callbacks.put(now)

    def _record(self, outcomes: list[Outcome], now: float) -> None:
        """Record ``outcomes``, trying again each second while the store fails (a full disk, say): dropped,
        delivered attempts would be sent again and retries would wait for their leases to expire. At stop it
        gives up: the leases expire and the deliveries are attempted again (at-least-once)."""
        failures = 0
        while True:
            try:
                self.store.record(outcomes, now)
                return
            except StoreError as exc:
                if failures == 0:
                    log.exception("outcomes.store_error", extra=fields(count=len(outcomes)))
                else:
                    log.error("outcomes.store_error", extra=fields(count=len(outcomes), error=str(exc)))
                failures += 1
            if self._stopping.wait(1.0):
                return

    @staticmethod
    def _with_callback(done: _Done, outcome: Outcome, now: float) -> Outcome:
        """The outcome with the callback it triggers, stored in the same transaction (never lost once the
        outcome is recorded)."""
        hook, lease, decision = done.hook, done.lease, done.decision
        if hook is None or lease is None or decision is None or outcome is not decision.outcome:
            return outcome
        callback = build_callback(lease, hook, decision, now, new_callback_id())
        return outcome if callback is None else replace(outcome, callback=callback)

    @staticmethod
    def _recheck_hold(done: _Done, snapshot: Snapshot, now: float) -> Outcome:
        """A hold decided just before the webhook was re-activated becomes a release (never stuck held)."""
        o = done.outcome
        if o.kind is OutcomeKind.HOLD and done.lease is not None:
            hook = snapshot.webhook(done.lease.webhook)
            if hook is not None and hook.active:
                return Outcome(o.delivery_id, o.lease_id, OutcomeKind.RELEASE, next_attempt_at=now)
        return o

    def _log_outcome(self, done: _Done) -> None:
        o = done.outcome
        if o.kind is OutcomeKind.RELEASE or (o.kind is OutcomeKind.DELIVERED and not self._debug):
            return
        a = o.attempt
        values = {
            "delivery": o.delivery_id,
            "webhook": done.lease.webhook if done.lease else None,
            "event_uuid": done.lease.event_uuid if done.lease else None,
            "status_code": a.status_code if a else None,
            "duration_ms": round(a.duration_seconds * 1000, 1) if a else None,
        }
        if a and a.error:
            values["error"] = a.error
        if o.kind is OutcomeKind.RETRY and o.next_attempt_at is not None:
            values["retry_in_s"] = round(o.next_attempt_at - (a.started_at if a else self.clock()), 1)
        if o.reason:
            values["reason"] = o.reason
        # Successes are routine (debug: thousands a second would drown the log); failures are news.
        level = {OutcomeKind.DEAD: 30, OutcomeKind.DELIVERED: 10}.get(o.kind, 20)
        log.log(level, f"delivery.{o.kind.value}", extra=fields(**values))

    # -- callbacks -------------------------------------------------------------------------------------

    def _callback_sender(self) -> None:
        self.callback_sender.run(self._stopping, self._callbacks)
