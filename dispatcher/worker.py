"""A worker: takes the next lease from the endpoint queues, attempts it through the client, puts the outcome.

The attempt itself is ``dispatcher.attempt`` (prepare, decide); the HTTP is the ``Client`` (``HttpClient`` in
this process, or ``ProcessClient`` in the delivery processes). The outcome goes to the outcome writer; the
endpoint's slot is given back with whether it looked healthy (answered, and not 5xx/429).

With a client that completes attempts later (``ProcessClient.submit``) a worker only hands attempts off; the
thread that completes one (the delivery process's reply reader) records it, gives the slot back and starts
the next ready lease itself (``EndpointQueues.done_and_take``), so at full speed no worker is woken per
attempt. Only attempts that must wait on HTTP (a token first) go back to the queues for a worker.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from enum import Enum
from typing import Any, Protocol

from dispatcher.attempt import decide, prepare, without_attempt
from dispatcher.config import Snapshot
from dispatcher.errors import DeliveryError, SecretError
from dispatcher.logs import fields, get_logger
from dispatcher.metrics import Metrics
from dispatcher.outbound import OutboundRequest
from dispatcher.outcomes import Done
from dispatcher.queues import EndpointQueues
from dispatcher.store.base import AttemptRecord, Lease, OutcomeKind
from dispatcher.supervise import describe
from reconciler.model import TokenAuth, Webhook

log = get_logger("engine")


def _log_bug(lease: Lease, exc: Exception) -> None:
    """A bug while handling a lease: where it happened, never its message (which could quote a secret)."""
    log.error("worker.unexpected_error", extra=fields(delivery=lease.delivery_id, error=describe(exc)))


class Client(Protocol):
    """What the engine needs from HTTP (``dispatcher.http.HttpClient``; tests pass a fake).

    A client may also offer ``submit(request, done)``: the attempt without waiting, ``done(record)`` called
    once when it ends (``ProcessClient``: on its reply reader). Workers then hand attempts off instead of
    waiting on each, so attempts in flight cost no thread in this process."""

    def send(self, request: OutboundRequest) -> AttemptRecord: ...

    def fetch_token(self, auth: TokenAuth, password: str, timeout_seconds: float) -> str: ...

    def post_json(self, url: str, payload: dict[str, Any], timeout_seconds: float) -> AttemptRecord: ...


Submit = Callable[[OutboundRequest, Callable[[AttemptRecord], None]], None]


class Start(Enum):
    """How a lease taken from the queues is started (``Worker._hand_off``)."""

    HANDED_OFF = "handed off"  # submitted: its completion gives the slot back
    DONE = "done"  # settled without HTTP (expired, removed, inactive, a secret that fails)
    WAITING = "waiting"  # handled by a thread that waits on the HTTP


class Worker:
    """Handles leases. ``handle(lease, now)`` is one lease; ``run(queues)`` loops on a thread until closed."""

    def __init__(
        self,
        client: Client,
        config: Callable[[], Snapshot],
        put: Callable[[Done], None],
        metrics: Metrics,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._config = config
        self._put = put
        self._metrics = metrics
        self._rng = rng
        self._clock = clock
        self._submit: Submit | None = getattr(client, "submit", None)
        self._busy_lock = threading.Lock()
        #: Worker threads busy with a lease right now (handing it off, or waiting on its attempt).
        self.busy_threads = 0
        self._completing = threading.local()  # set while this thread runs a completion's ``_next``

    def run(self, queues: EndpointQueues, on_take: Callable[[], None] = lambda: None) -> None:
        """Take, handle and give back leases until the queues are closed; ``on_take`` after every take (the
        engine starts another worker there when every one is busy)."""
        while True:
            item = queues.take()
            if item is None:
                return
            key, lease = item
            healthy = True
            start = Start.DONE
            busy = False
            try:
                with self._busy_lock:
                    self.busy_threads += 1
                busy = True
                on_take()
                start = self._hand_off(key, lease, queues)
                if start is Start.WAITING:
                    healthy = self.handle(lease, self._clock())
            except Exception as exc:
                # A bug must not kill the worker; the lease expires and the delivery is retried.
                _log_bug(lease, exc)
            finally:
                if busy:
                    with self._busy_lock:
                        self.busy_threads -= 1
                if start is not Start.HANDED_OFF:  # else the attempt's completion gives the slot back
                    queues.done(key, healthy)

    def _hand_off(self, key: str, lease: Lease, queues: EndpointQueues) -> Start:
        """Submit a plain attempt to a client that completes it later, without this thread waiting. Else
        settle what needs no HTTP here (``DONE``: expired, its webhook removed or inactive, a secret that
        fails), or say it must wait on HTTP (``WAITING``: a token to fetch first, or a client that cannot hand
        off: ``handle`` does it). One config snapshot decides and settles: a reload in between must not turn
        a lease settled here into HTTP on a thread that must not wait (a completion's)."""
        if self._submit is None:
            return Start.WAITING
        now = self._clock()
        snapshot = self._config()
        hook = snapshot.webhook(lease.webhook)
        if self._settle_without_http(lease, hook, now) is not None:
            return Start.DONE
        assert hook is not None
        if isinstance(hook.auth, TokenAuth):
            return Start.WAITING
        try:
            request = prepare(lease, hook, snapshot, int(now))
        except SecretError as exc:
            self._secret_failed(lease, hook, exc, now)
            return Start.DONE

        def done(record: AttemptRecord) -> None:
            healthy = True
            try:
                self._metrics.attempt_duration.observe(record.duration_seconds)
                decision = decide(lease, hook, record, self._rng, self._clock())
                self._put(Done(decision.outcome, hook, lease, decision))
                healthy = record.healthy
            except Exception as exc:  # the lease expires and the delivery is retried
                _log_bug(lease, exc)
            finally:
                self._next(key, healthy, queues)

        self._submit(request, done)
        return Start.HANDED_OFF

    def _settle_without_http(self, lease: Lease, hook: Webhook | None, now: float) -> bool | None:
        """Settle a lease that is not to be attempted (expired: the store reclaims it; webhook removed:
        dead; inactive: held) and say the endpoint looked healthy; None when it is to be attempted."""
        if lease.expires_at <= now:
            return True  # attempting now could race another holder
        if hook is None:
            self._put(Done(without_attempt(lease, OutcomeKind.DEAD, reason="webhook removed"), lease=lease))
            return True
        if not hook.active:
            self._put(Done(without_attempt(lease, OutcomeKind.HOLD), hook, lease))
            return True
        return None

    def _secret_failed(self, lease: Lease, hook: Webhook, exc: SecretError, now: float) -> bool:
        """A refused or unresolvable secret is this webhook's failed attempt (retried, dead at the end, with
        the reason: the reference, never a value), not a bug; nothing was sent, the endpoint is not to
        blame."""
        self._metrics.secret_errors.inc()
        record = AttemptRecord(started_at=now, duration_seconds=0.0, error=str(exc))
        decision = decide(lease, hook, record, self._rng, self._clock())
        self._put(Done(decision.outcome, hook, lease, decision))
        return True

    def _next(self, key: str, healthy: bool, queues: EndpointQueues) -> None:
        """After a handed-off attempt (on the thread that completed it): give its slot back and start the
        next ready lease here, so no worker is woken for it; leases handled without HTTP are handled here
        too. A lease that must wait on HTTP goes back to the queues for a worker. Not from inside another
        completion (an attempt that failed to send completes at once, on the thread submitting it): there the
        slot is only given back, so a run of such failures cannot recurse."""
        if getattr(self._completing, "active", False):
            queues.done(key, healthy)
            return
        self._completing.active = True
        try:
            item = queues.done_and_take(key, healthy)
            while item is not None:
                key, lease = item
                healthy = True
                try:
                    start = self._hand_off(key, lease, queues)
                    if start is Start.HANDED_OFF:
                        return
                    if start is Start.WAITING:
                        queues.give_back(key, lease)
                        return
                except Exception as exc:
                    _log_bug(lease, exc)
                item = queues.done_and_take(key, healthy)
        finally:
            self._completing.active = False

    def handle(self, lease: Lease, now: float) -> bool:
        """Handle one lease; returns whether the endpoint looked healthy (answered, and not 5xx/429)."""
        snapshot = self._config()
        hook = snapshot.webhook(lease.webhook)
        if (settled := self._settle_without_http(lease, hook, now)) is not None:
            return settled
        assert hook is not None
        try:
            record = self._attempt(lease, hook, snapshot, now)
        except SecretError as exc:
            return self._secret_failed(lease, hook, exc, now)
        self._metrics.attempt_duration.observe(record.duration_seconds)
        decision = decide(lease, hook, record, self._rng, self._clock())
        self._put(Done(decision.outcome, hook, lease, decision))
        return record.healthy

    def _attempt(self, lease: Lease, hook: Webhook, snapshot: Snapshot, now: float) -> AttemptRecord:
        """Make the HTTP attempt; SecretError (before anything is sent) when a secret it needs is missing.

        ``config.timeout`` bounds the whole attempt: after a token request, the POST gets what is left."""
        token: str | None = None
        timeout = hook.timeout_seconds
        if isinstance(hook.auth, TokenAuth):
            started = time.monotonic()
            try:
                raw = self._client.fetch_token(hook.auth, snapshot.secret(hook.auth.password), timeout)
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
        return self._client.send(request)
