"""Engine worker threads start as attempts in flight need them, up to ``--workers``, and no further."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.config import Snapshot
from dispatcher.engine import INITIAL_WORKERS, Engine, EngineSettings
from dispatcher.outbound import OutboundRequest
from dispatcher.store.base import AttemptRecord, DeliveryQuery, DeliveryStatus, NewEvent
from dispatcher.store.memory import MemoryStore
from reconciler.model import TokenAuth, Webhook
from reconciler.routing import build_routing_table
from tests.conftest import wait_until


class GatedClient:
    """Holds every attempt until released; counts attempts in flight and the most at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0

    def send(self, request: OutboundRequest) -> AttemptRecord:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        self.release.wait(10)
        with self.lock:
            self.in_flight -= 1
        return AttemptRecord(started_at=time.time(), duration_seconds=0.001, status_code=204)

    def fetch_token(self, auth: TokenAuth, password: str, timeout_seconds: float) -> str:
        return "token"

    def post_json(self, url: str, payload: dict[str, Any], timeout_seconds: float) -> AttemptRecord:
        return AttemptRecord(started_at=time.time(), duration_seconds=0.001, status_code=204)


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    s = MemoryStore()
    yield s
    s.close()


def _hooks(n: int) -> list[Webhook]:
    return [
        Webhook(name=f"h{i}", target_url=f"https://e{i}.example.com/h", event_types=("package.created",))
        for i in range(n)
    ]


def _engine(store: MemoryStore, client: GatedClient, hooks: list[Webhook], workers: int) -> Engine:
    snapshot = Snapshot(build_routing_table(hooks, "rev-1"), {}, "rev-1")
    settings = EngineSettings(workers=workers, per_endpoint=1)
    return Engine(store, client, lambda: snapshot, settings=settings, rng=random.Random(1))


def _deliver_to_all(store: MemoryStore, engine: Engine, hooks: list[Webhook], uuid: str) -> None:
    names = tuple(h.name for h in hooks)
    [result] = store.enqueue([NewEvent(uuid, "package.created", b"{}", names)], time.time(), 60)
    engine.intake.admit(result.leases)


def test_an_idle_engine_starts_only_its_first_workers(store: MemoryStore) -> None:
    """With nothing to deliver, a large --workers costs only the first few threads."""
    engine = _engine(store, GatedClient(), _hooks(1), workers=512)
    engine.start()
    try:
        assert engine.workers_started == INITIAL_WORKERS
        assert engine.is_running()
    finally:
        engine.stop(grace_seconds=1)


def test_workers_grow_to_the_attempts_in_flight_and_never_past_the_limit(store: MemoryStore) -> None:
    """30 endpoints each with an attempt held: 20 workers (the limit) start, 20 attempts run at once, and the
    other 10 wait for a worker, then every delivery is made."""
    client = GatedClient()
    hooks = _hooks(30)
    engine = _engine(store, client, hooks, workers=20)
    engine.start()
    try:
        _deliver_to_all(store, engine, hooks, "ab" * 16)
        wait_until(lambda: client.in_flight == 20)
        assert engine.workers_started == 20
        client.release.set()
        wait_until(
            lambda: (
                all(d.status == DeliveryStatus.DELIVERED for d in store.list_deliveries(DeliveryQuery()))
                and len(store.list_deliveries(DeliveryQuery())) == 30
            )
        )
        assert client.most == 20
        assert engine.workers_started == 20
    finally:
        client.release.set()
        engine.stop(grace_seconds=5)


def test_workers_grow_only_while_every_started_one_is_busy(store: MemoryStore) -> None:
    """Attempts that finish before the next arrives keep reusing the first workers."""
    client = GatedClient()
    client.release.set()
    hooks = _hooks(1)
    engine = _engine(store, client, hooks, workers=512)
    engine.start()
    try:
        for i in range(30):
            _deliver_to_all(store, engine, hooks, f"{i:032x}")
            wait_until(lambda: engine.is_idle())
        assert engine.workers_started == INITIAL_WORKERS
    finally:
        engine.stop(grace_seconds=5)
