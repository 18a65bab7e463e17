"""Ingest containment: whatever one line or event does, only it is rejected; the committer carries on."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from dispatcher import ingest
from dispatcher.config import Snapshot
from dispatcher.errors import StoreError
from dispatcher.ingest import Committer, Ingestor
from dispatcher.metrics import Metrics
from dispatcher.protocol import parse_line
from dispatcher.store.base import DeliveryQuery, EnqueueResult, NewEvent
from dispatcher.store.memory import MemoryStore
from dispatcher.supervise import Supervisor
from reconciler.model import Webhook
from reconciler.routing import build_routing_table
from tests.dispatcher.intakes import LeasingIntake, NoIntake


class PickyStore(MemoryStore):
    """A MemoryStore that raises ``error`` (before storing anything) for any group holding a poisoned uuid."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.poisoned: set[str] = set()
        self.calls = 0

    def enqueue(
        self, events: Sequence[NewEvent], now: float, *args: Any, **kwargs: Any
    ) -> list[EnqueueResult]:
        self.calls += 1
        if any(e.uuid in self.poisoned for e in events):
            raise self.error
        return super().enqueue(events, now, *args, **kwargs)


def _committer(store: MemoryStore, **kwargs: Any) -> Committer:
    return Committer(store, time.time, NoIntake(), Metrics(), **kwargs)


def _event(event_uuid: str) -> NewEvent:
    return NewEvent(uuid=event_uuid, type="package.created", body=b"{}", webhooks=("a",))


def _results(committer: Committer, events: list[NewEvent]) -> list[EnqueueResult | str]:
    batch = committer.submit(events)
    assert batch.done.wait(5), "the batch was never answered"
    assert batch.results is not None
    return batch.results


def test_an_event_the_store_cannot_take_is_rejected_alone() -> None:
    """A non-store exception for one event of a group rejects that event only; the rest are stored."""
    store = PickyStore(UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed"))
    committer = _committer(store)
    uuids = [uuid.uuid4().hex for _ in range(9)]
    store.poisoned.add(uuids[4])
    results = _results(committer, [_event(u) for u in uuids])
    assert results[4] == ingest.UNSTORABLE
    others = [r for i, r in enumerate(results) if i != 4]
    assert all(isinstance(r, EnqueueResult) and not r.duplicate for r in others)
    stored = {d.event_uuid for d in store.list_deliveries(DeliveryQuery())}
    assert stored == set(uuids) - {uuids[4]}
    later = uuid.uuid4().hex
    assert isinstance(_results(committer, [_event(later)])[0], EnqueueResult)  # the committer carries on
    committer.close()


def test_a_store_failure_rejects_the_group_with_retry() -> None:
    """A StoreError (disk full, locked) rejects every event of the group with "retry this event"."""
    store = PickyStore(StoreError("disk full"))
    committer = _committer(store)
    uuids = [uuid.uuid4().hex for _ in range(4)]
    store.poisoned.add(uuids[0])
    assert _results(committer, [_event(u) for u in uuids]) == [ingest.RETRY] * 4
    assert store.calls == 1  # not bisected: the store, not an event, failed
    committer.close()


def test_a_line_whose_handling_raises_is_rejected_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug hit by one line becomes that line's rejection; the lines around it are acknowledged."""
    real = parse_line

    def parse(raw: bytes, line_no: int) -> Any:
        if b"poison" in raw:
            raise RecursionError("boom")
        return real(raw, line_no)

    monkeypatch.setattr(ingest, "parse_line", parse)
    store = MemoryStore()
    hook = Webhook(name="a", target_url="https://a.example.com/h", event_types=("package.created",))
    snapshot = Snapshot(build_routing_table([hook], "rev-1"), {}, "rev-1")
    committer = _committer(store)
    ingestor = Ingestor(committer, lambda: snapshot, Metrics(), 1 << 20)
    lines = [
        b'{"event":{"type":"package.created"}}',
        b'{"poison":1}',
        b'{"event":{"type":"package.created"}}',
    ]
    acks = [json.loads(a) for a in ingestor.start(list(enumerate(lines, start=1)))().splitlines()]
    assert [a["ok"] for a in acks] == [True, False, True]
    assert acks[1] == {"ok": False, "line": 2, "error": "internal error while handling this line"}
    committer.close()


def test_a_dead_committer_rejects_waiting_batches_and_reports_a_fault() -> None:
    """If the committer thread dies, waiting and later batches are rejected (never left waiting), and the
    supervisor records which thread died and why."""
    store = MemoryStore()
    faults = threading.Event()
    supervisor = Supervisor(on_fault=faults.set)

    def explode(leases: object) -> None:
        raise KeyError("secret-looking message")

    committer = Committer(store, time.time, LeasingIntake(explode), Metrics(), spawn=supervisor.spawn)
    first = _results(committer, [_event(uuid.uuid4().hex)])
    assert isinstance(first[0], EnqueueResult)  # committed before the hand-off raised
    assert faults.wait(5)
    assert _results(committer, [_event(uuid.uuid4().hex)]) == [ingest.STOPPED]
    fault = supervisor.fault
    assert fault is not None and fault.thread == "dispatch-committer"
    assert fault.reason.startswith("KeyError at ")
    assert "secret" not in fault.reason
