"""Attempts handed off instead of waited on: ``ProcessClient.submit`` completes each attempt on its reply
reader, and the engine's workers use it so that attempts in flight hold no thread of the main process."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from dispatcher.config import Snapshot
from dispatcher.engine import INITIAL_WORKERS, Engine, EngineSettings
from dispatcher.outbound import OutboundRequest
from dispatcher.queues import EndpointQueues
from dispatcher.store.base import AttemptRecord, DeliveryQuery, DeliveryStatus, Lease, NewEvent
from dispatcher.store.memory import MemoryStore
from dispatcher.transport import ProcessClient
from reconciler.model import SecretRef, TokenAuth, Webhook
from reconciler.routing import build_routing_table
from tests.conftest import wait_until
from tests.dispatcher.test_http import LocalServer
from tests.dispatcher.test_transport import LOOPBACK, hang_until_released
from tests.dispatcher.test_transport import server as server  # the fixture


class Recorder:
    """A ``done`` callback that keeps every record it is given, and on which thread."""

    def __init__(self) -> None:
        self.records: list[AttemptRecord] = []
        self.threads: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, record: AttemptRecord) -> None:
        with self.lock:
            self.records.append(record)
            self.threads.append(threading.current_thread().name)


def test_submit_completes_each_attempt_once_on_the_reply_reader(server: LocalServer) -> None:
    """Every submitted attempt reaches the receiver and its ``done`` is called exactly once, with the
    answer, on a reply-reader thread: the caller never waits."""
    with ProcessClient(LOOPBACK, processes=2, threads_per_process=4) as client:
        done = Recorder()
        for i in range(10):
            client.submit(OutboundRequest(server.url(), b'{"n":%d}' % i, {}, 5.0), done)
        wait_until(lambda: len(done.records) >= 10, timeout=20)
        time.sleep(0.2)  # a second call for any attempt would land now
    assert len(done.records) == 10
    assert all(r.status_code == 200 and r.error is None for r in done.records)
    assert all(name.startswith("dispatch-replies-") for name in done.threads)
    assert sorted(seen.body for seen in server.requests) == sorted(b'{"n":%d}' % i for i in range(10))


def test_submit_to_a_killed_child_completes_with_an_error(server: LocalServer) -> None:
    """kill -9 of the child while a submitted attempt is in flight: ``done`` gets the error record."""
    entered, release = hang_until_released(server)
    with ProcessClient(LOOPBACK, processes=1) as client:
        [pid] = client.pids
        done = Recorder()
        client.submit(OutboundRequest(server.url(), b"{}", {}, 30.0), done)
        assert entered.wait(10)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: bool(done.records), timeout=10)
        release.set()
    [record] = done.records
    assert record.status_code is None and record.error == "delivery process exited during the attempt"


def test_a_child_that_never_answers_is_found_by_the_sweeper(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that stops answering (here: stopped with SIGSTOP) does not strand a submitted attempt: past
    the reply grace the sweeper completes it with an error."""
    from dispatcher import transport

    monkeypatch.setattr(transport, "_reply_grace", lambda timeout: 0.5)
    with ProcessClient(LOOPBACK, processes=1) as client:
        [pid] = client.pids
        os.kill(pid, signal.SIGSTOP)
        try:
            done = Recorder()
            client.submit(OutboundRequest(server.url(), b"{}", {}, 5.0), done)
            wait_until(lambda: bool(done.records), timeout=10)
            assert server.requests == []  # the child never got to it
        finally:
            os.kill(pid, signal.SIGCONT)
    [record] = done.records
    assert record.error == "no answer from the delivery process in time"


def test_delivery_processes_run_nicer_than_the_main_process() -> None:
    """``nice`` lowers the children's CPU priority by that much (read back from /proc)."""

    def nice_of(pid: int) -> int:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])

    mine = nice_of(os.getpid())
    lowered = min(7, 19 - mine)  # the kernel stops at 19, whatever this test runs at
    with ProcessClient(LOOPBACK, processes=2, nice=7) as client:
        # The child lowers its own priority as it starts; a reply to a request means it has.
        assert client.post_json("http://127.0.0.1:9/", {}, 1.0) is not None
        assert client.post_json("http://127.0.0.1:9/", {}, 1.0) is not None
        assert [nice_of(pid) - mine for pid in client.pids] == [lowered, lowered]
    with ProcessClient(LOOPBACK, processes=1) as client:
        assert client.post_json("http://127.0.0.1:9/", {}, 1.0) is not None
        assert [nice_of(pid) - mine for pid in client.pids] == [0]


# -- the engine with a client that completes attempts later ------------------------------------------------


class LaterClient:
    """Completes submitted attempts when told to (``finish_all``), on the caller's thread; ``send`` is for
    what cannot be handed off (tokens, here counted)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: list[tuple[OutboundRequest, Callable[[AttemptRecord], None]]] = []
        self.sent = 0
        self.submitters: list[str] = []  # the thread of each submit
        self.send_threads: list[str] = []  # the thread of each send

    def submit(self, request: OutboundRequest, done: Callable[[AttemptRecord], None]) -> None:
        with self.lock:
            self.waiting.append((request, done))
            self.submitters.append(threading.current_thread().name)

    def finish_all(self, status: int = 204) -> int:
        with self.lock:
            waiting, self.waiting = self.waiting, []
        for _, done in waiting:
            done(AttemptRecord(started_at=time.time(), duration_seconds=0.001, status_code=status))
        return len(waiting)

    def send(self, request: OutboundRequest) -> AttemptRecord:
        with self.lock:
            self.sent += 1
            self.send_threads.append(threading.current_thread().name)
        return AttemptRecord(started_at=time.time(), duration_seconds=0.001, status_code=204)

    def fetch_token(self, auth: TokenAuth, password: str, timeout_seconds: float) -> str:
        return "token"

    def post_json(self, url: str, payload: dict[str, Any], timeout_seconds: float) -> AttemptRecord:
        return AttemptRecord(started_at=time.time(), duration_seconds=0.001, status_code=204)


def _hooks(n: int, **extra: Any) -> list[Webhook]:
    return [
        Webhook(
            name=f"h{i}",
            target_url=f"https://e{i}.example.com/h",
            event_types=("package.created",),
            **extra,
        )
        for i in range(n)
    ]


@contextlib.contextmanager
def _running(hooks: list[Webhook], **settings: Any) -> Iterator[tuple[MemoryStore, LaterClient, Engine]]:
    """A started engine on a memory store with a ``LaterClient``; stopped and closed on exit."""
    store = MemoryStore()
    client = LaterClient()
    secrets = {SecretRef("env", "WEBHOOK_PW"): "pw"}
    snapshot = Snapshot(build_routing_table(hooks, "rev-1"), secrets, "rev-1")
    engine = Engine(
        store, client, lambda: snapshot, settings=EngineSettings(**settings), rng=random.Random(1)
    )
    engine.start()
    try:
        yield store, client, engine
    finally:
        engine.stop(grace_seconds=1)
        store.close()


def _enqueue(store: MemoryStore, engine: Engine, hooks: list[Webhook], n: int) -> None:
    names = tuple(h.name for h in hooks)
    events = [NewEvent(f"{i:032x}", "package.created", b"{}", names) for i in range(n)]
    for result in store.enqueue(events, time.time(), 60):
        engine.intake.admit(result.leases)


def _delivered(store: MemoryStore) -> int:
    return len(store.list_deliveries(DeliveryQuery(status=DeliveryStatus.DELIVERED, limit=10_000)))


def test_handed_off_attempts_hold_no_worker_thread() -> None:
    """With a client that completes attempts later, 200 attempts in flight at once (200 endpoints) take no
    more than the engine's first workers, and each completion records its outcome and frees its slot."""
    hooks = _hooks(200)
    with _running(hooks, workers=512, per_endpoint=1) as (store, client, engine):
        _enqueue(store, engine, hooks, 1)
        wait_until(lambda: len(client.waiting) == 200, timeout=10)
        assert engine.queues.busy == 200
        # A ninth may start when all eight are mid-hand-off at once; a thread per attempt would make 200.
        assert INITIAL_WORKERS <= engine.workers_started < 50
        assert client.finish_all() == 200
        wait_until(lambda: _delivered(store) == 200, timeout=10)
        wait_until(lambda: engine.queues.busy == 0, timeout=10)
        assert client.sent == 0


def test_attempts_in_flight_never_exceed_workers_when_handed_off() -> None:
    """``--workers`` still bounds attempts in flight when no thread waits on them."""
    hooks = _hooks(50)
    with _running(hooks, workers=20, per_endpoint=1) as (store, client, engine):
        _enqueue(store, engine, hooks, 1)
        wait_until(lambda: len(client.waiting) == 20, timeout=10)
        time.sleep(0.3)  # room for a 21st, were the bound not held
        assert len(client.waiting) == 20 and engine.queues.busy == 20
        finished = 0
        while finished < 50:
            finished += client.finish_all()
            assert engine.queues.busy <= 20
            time.sleep(0.05)
        wait_until(lambda: _delivered(store) == 50, timeout=10)


def test_token_auth_attempts_are_made_by_a_waiting_worker() -> None:
    """An attempt that needs a token first is not handed off: a worker fetches the token and sends."""
    hooks = _hooks(1, auth=TokenAuth("https://e0.example.com/token", "u", SecretRef("env", "WEBHOOK_PW")))
    with _running(hooks, workers=8) as (store, client, engine):
        _enqueue(store, engine, hooks, 3)
        wait_until(lambda: _delivered(store) == 3, timeout=10)
        assert client.sent == 3 and client.waiting == []


def test_a_failing_completion_still_frees_its_endpoint_slot() -> None:
    """A bug while completing an attempt (here: the outcome writer refuses it) is logged, and the endpoint's
    slot is given back, so the next lease of that endpoint is attempted."""
    hooks = _hooks(1)
    with _running(hooks, workers=8, per_endpoint=1) as (store, client, engine):
        put = engine.worker._put
        calls = {"n": 0}

        def flaky_put(done: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom")
            put(done)

        engine.worker._put = flaky_put
        _enqueue(store, engine, hooks, 2)
        wait_until(lambda: len(client.waiting) == 1, timeout=10)
        client.finish_all()  # the first completion fails inside
        wait_until(lambda: len(client.waiting) == 1, timeout=10)  # the slot came back: the second goes
        client.finish_all()
        wait_until(lambda: _delivered(store) == 1, timeout=10)
        assert engine.queues.busy == 0


def test_queues_hold_attempts_in_flight_to_their_bound() -> None:
    """``EndpointQueues(max_in_flight=N)``: the N+1st take waits until one is done."""
    queues = EndpointQueues(per_endpoint=8, max_in_flight=2)
    lease = Lease(1, 1, time.time() + 60, "u", "t", "h", b"{}", 0, time.time())
    for key in ("a", "b", "c"):
        queues.put(key, lease)
    first, second = queues.take(0), queues.take(0)
    assert first is not None and second is not None
    assert queues.take(0) is None
    queues.done(first[0])
    third = queues.take(0)
    assert third is not None and third[0] == "c"


def test_a_freed_slot_wakes_a_waiting_worker_however_the_attempts_end() -> None:
    """Two attempts ending back to back while at the in-flight bound: both waiting takers get a lease (a
    wake-up only on the step down from the bound lost the second)."""
    queues = EndpointQueues(per_endpoint=8, max_in_flight=3)
    lease = Lease(1, 1, time.time() + 60, "u", "t", "h", b"{}", 0, time.time())
    for key in ("a", "b", "c", "d", "e"):
        queues.put(key, lease)
    taken = [queues.take(0) for _ in range(3)]
    assert [t[0] for t in taken if t] == ["a", "b", "c"]
    got: list[str] = []
    takers = [threading.Thread(target=lambda: got.append(queues.take(5)[0])) for _ in range(2)]  # type: ignore[index]
    for t in takers:
        t.start()
    wait_until(lambda: len(queues._cond._waiters) == 2, timeout=5)  # type: ignore[attr-defined]
    with queues._cond:  # both end before either taker runs
        queues.done("a")
        queues.done("b")
    for t in takers:
        t.join(5)
    assert sorted(got) == ["d", "e"]


def test_done_and_take_starts_the_next_lease_and_give_back_returns_it_first() -> None:
    """``done_and_take`` frees the slot and takes the next ready lease for the caller; ``give_back`` puts a
    taken lease first in its queue again and frees its slot."""
    queues = EndpointQueues(per_endpoint=1, max_in_flight=10)
    first = Lease(1, 1, time.time() + 60, "u1", "t", "h", b"{}", 0, time.time())
    second = Lease(2, 1, time.time() + 60, "u2", "t", "h", b"{}", 0, time.time())
    queues.put("a", first)
    queues.put("a", second)
    assert queues.take(0) == ("a", first)
    assert queues.take(0) is None  # one slot per endpoint
    assert queues.done_and_take("a") == ("a", second)
    assert queues.busy == 1
    queues.give_back("a", second)
    assert queues.busy == 0 and queues.size == 1
    assert queues.take(0) == ("a", second)


def test_the_completing_thread_starts_the_next_attempt() -> None:
    """With one slot per endpoint and a backlog, each completion starts the next attempt on the completing
    thread: the workers take only the first lease of each endpoint."""
    hooks = _hooks(2)
    with _running(hooks, workers=8, per_endpoint=1) as (store, client, engine):
        _enqueue(store, engine, hooks, 5)
        wait_until(lambda: len(client.waiting) == 2, timeout=10)
        for _ in range(4):
            with client.lock:
                waiting, client.waiting = client.waiting, []
            for _, done in waiting:
                done(AttemptRecord(started_at=time.time(), duration_seconds=0.001, status_code=204))
            wait_until(lambda: len(client.waiting) == 2, timeout=10)
        assert client.finish_all() == 2
        wait_until(lambda: _delivered(store) == 10, timeout=10)
        assert client.submitters.count("MainThread") == 8  # the 8 leases after the first two
        assert sum(name.startswith("dispatch-worker-") for name in client.submitters) == 2


def test_a_token_lease_met_by_a_completion_goes_back_to_a_worker() -> None:
    """A completion that meets a lease needing a token first does not fetch it on the completing thread
    (a reply reader must never wait on HTTP): it gives the lease back, and a worker sends it."""
    token_hook = _hooks(
        1, auth=TokenAuth("https://e0.example.com/token", "u", SecretRef("env", "WEBHOOK_PW"))
    )
    plain = [
        Webhook(name="p", target_url="https://e0.example.com/p", event_types=("package.created",))
    ]  # the same endpoint: its completion takes the token webhook's lease next
    hooks = plain + token_hook
    with _running(hooks, workers=8, per_endpoint=1) as (store, client, engine):
        names = ("p", "h0")
        [result] = store.enqueue([NewEvent("0" * 32, "package.created", b"{}", names)], time.time(), 60)
        engine.intake.admit(result.leases)
        wait_until(lambda: len(client.waiting) == 1, timeout=10)
        client.finish_all()  # p's completion meets h0's lease
        wait_until(lambda: _delivered(store) == 2, timeout=10)
        assert client.sent == 1 and client.send_threads[0].startswith("dispatch-worker-")


def test_attempts_that_fail_to_send_at_once_do_not_recurse() -> None:
    """A client whose every submit fails at once (a dead delivery process) completes each attempt on the
    submitting thread: a backlog of thousands is recorded as failed attempts, without recursion."""

    class Failing(LaterClient):
        def submit(self, request: OutboundRequest, done: Callable[[AttemptRecord], None]) -> None:
            done(AttemptRecord(time.time(), 0.0, error="delivery process unavailable"))

    hooks = _hooks(1)
    store = MemoryStore()
    snapshot = Snapshot(build_routing_table(hooks, "rev-1"), {}, "rev-1")
    engine = Engine(store, Failing(), lambda: snapshot, settings=EngineSettings(), rng=random.Random(1))
    engine.start()
    try:
        _enqueue(store, engine, hooks, 3000)
        query = DeliveryQuery(status=DeliveryStatus.FAILED, limit=10_000)
        wait_until(lambda: len(store.list_deliveries(query)) == 3000, timeout=30)
    finally:
        engine.stop(grace_seconds=1)
        store.close()


def test_a_completion_runs_once_whichever_of_reply_and_failure_comes_first() -> None:
    """``_Completion``: a failure after the reply (the sweeper, a failed send) does not call ``done`` again,
    and a reply that is not an attempt's still ends the attempt, with an error."""
    from dispatcher.messages import AttemptReply, TokenReply
    from dispatcher.transport import _Completion

    done = Recorder()
    entry = _Completion(done, time.time(), time.monotonic() + 60)
    entry.set(AttemptReply(1, time.time(), 0.01, 204, None, {}, ""))
    entry.fail("no answer from the delivery process in time")
    entry.set(None)
    assert [r.status_code for r in done.records] == [204]

    odd = Recorder()
    _Completion(odd, time.time(), time.monotonic() + 60).set(TokenReply(2, "tok", None))
    [record] = odd.records
    assert record.status_code is None and record.error == "internal error in the dispatcher (TypeError)"


def test_submit_after_close_completes_at_once_with_an_error() -> None:
    """An attempt submitted once the delivery processes are gone is this attempt's failure, at once."""
    client = ProcessClient(LOOPBACK, processes=1)
    client.close()  # returns once the delivery process has exited
    done = Recorder()
    client.submit(OutboundRequest("http://127.0.0.1:9/", b"{}", {}, 1.0), done)
    [record] = done.records
    assert record.status_code is None
    assert record.error is not None and record.error.startswith("delivery process unavailable")


def test_a_reload_between_deciding_and_settling_never_puts_http_on_the_completing_thread() -> None:
    """A completion meets a lease whose webhook is inactive, and a reload activates it right after the
    completing thread has looked: the lease is settled (held) with the snapshot that decided it, and no
    HTTP is made on the completing thread (a reply reader must never wait on HTTP)."""
    plain = Webhook(name="p", target_url="https://e0.example.com/p", event_types=("package.created",))
    paused = Webhook(
        name="h0", target_url="https://e0.example.com/h", event_types=("package.created",), active=False
    )  # the same endpoint as p: p's completion takes h0's lease next
    before = Snapshot(build_routing_table([plain, paused], "rev-1"), {}, "rev-1")
    after = Snapshot(build_routing_table([plain, replace(paused, active=True)], "rev-2"), {}, "rev-2")
    completing: list[int] = []  # this thread's config reads while it completes p's attempt

    def config() -> Snapshot:
        if threading.current_thread() is threading.main_thread() and completing:
            completing.append(1)
            return before if len(completing) == 2 else after  # the reload lands after the first look
        return before

    store = MemoryStore()
    client = LaterClient()
    engine = Engine(
        store, client, config, settings=EngineSettings(workers=8, per_endpoint=1), rng=random.Random(1)
    )
    engine.start()
    try:
        [result] = store.enqueue([NewEvent("0" * 32, "package.created", b"{}", ("p", "h0"))], time.time(), 60)
        engine.intake.admit(result.leases)
        wait_until(lambda: len(client.waiting) == 1, timeout=10)
        completing.append(1)
        client.finish_all()  # on this thread: p's completion meets h0's lease
        wait_until(lambda: _delivered(store) == 1, timeout=10)
        wait_until(lambda: store.release_held("h0", time.time()) == 1, timeout=10)  # it was parked
        assert client.sent == 0
    finally:
        engine.stop(grace_seconds=1)
        store.close()


def test_a_completion_that_fails_on_a_failed_send_never_reaches_the_submitter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in ``done`` when the attempt could not be sent is logged (where, not its message) and not
    raised into the submitting worker, whose slot accounting would otherwise run a second time."""
    client = ProcessClient(LOOPBACK, processes=1)
    client.close()

    def done(record: AttemptRecord) -> None:
        raise RuntimeError("secret-looking message")

    client.submit(OutboundRequest("http://127.0.0.1:9/", b"{}", {}, 1.0), done)  # must not raise
    [logged] = [r for r in caplog.records if r.getMessage() == "transport.completion_failed"]
    assert "secret-looking" not in str(logged.__dict__) and logged.exc_info is None


def test_giving_back_to_closed_queues_wakes_whoever_waits_for_idle() -> None:
    """The last lease in flight given back after the queues closed (shutdown) frees its slot and wakes
    ``wait_idle`` at once, instead of letting it wait out its whole grace."""
    queues = EndpointQueues(per_endpoint=1, max_in_flight=10)
    lease = Lease(1, 1, time.time() + 60, "u1", "t", "h", b"{}", 0, time.time())
    queues.put("a", lease)
    assert queues.take(0) == ("a", lease)
    queues.close()
    idle: list[bool] = []
    waiter = threading.Thread(target=lambda: idle.append(queues.wait_idle(600)), daemon=True)
    waiter.start()
    time.sleep(0.2)  # so that it is waiting when the slot is freed (the case that was missed)
    queues.give_back("a", lease)
    waiter.join(30)
    assert idle == [True] and queues.busy == 0
