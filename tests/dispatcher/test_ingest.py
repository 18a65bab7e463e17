"""Ingest: a stream read ahead of its commits, acknowledged in order and only once durable."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from dispatcher.config import Snapshot
from dispatcher.ingest import Committer, Ingestor
from dispatcher.metrics import Metrics
from dispatcher.server import serve_stdin, serve_stream
from dispatcher.store.base import DeliveryQuery, EnqueueResult, NewEvent
from dispatcher.store.memory import MemoryStore
from reconciler.model import Webhook
from reconciler.routing import build_routing_table
from tests.conftest import wait_until
from tests.dispatcher.intakes import NoIntake


class GatedStore(MemoryStore):
    """A MemoryStore whose enqueue waits for ``gate`` (a slow disk), counting the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.enqueues = 0

    def enqueue(
        self, events: Sequence[NewEvent], now: float, *args: Any, **kwargs: Any
    ) -> list[EnqueueResult]:
        self.enqueues += 1
        assert self.gate.wait(10)
        return super().enqueue(events, now, *args, **kwargs)


def _line(event_uuid: str) -> bytes:
    doc = {"event": {"type": "package.created", "uuid": event_uuid}, "payload": {"id": 1}}
    return json.dumps(doc).encode() + b"\n"


@pytest.fixture
def store() -> Iterator[GatedStore]:
    s = GatedStore()
    yield s
    s.close()


def _ingestor(store: GatedStore) -> tuple[Ingestor, Committer]:
    hook = Webhook(name="a", target_url="https://a.example.com/h", event_types=("package.created",))
    snapshot = Snapshot(build_routing_table([hook], "rev-1"), {}, "rev-1")
    metrics = Metrics()
    committer = Committer(store, time.time, NoIntake(), metrics)
    return Ingestor(committer, lambda: snapshot, metrics, 1 << 20), committer


def test_stream_is_read_ahead_of_its_commit_and_acknowledged_in_order(store: GatedStore) -> None:
    """While the first read's commit waits on the disk, the next reads are taken in; no ack is written
    before the events are stored; then every ack comes, in input order."""
    ingestor, committer = _ingestor(store)
    uuids = [uuid.uuid4().hex for _ in range(6)]
    chunks = [_line(u) for u in uuids] + [b""]
    taken: list[int] = []
    written: list[bytes] = []

    def read() -> bytes:
        taken.append(1)
        return chunks[len(taken) - 1]

    server = threading.Thread(target=serve_stream, args=(read, written.append, ingestor))
    server.start()
    try:
        wait_until(lambda: len(taken) >= len(chunks), timeout=10)  # every read, though nothing is committed
        assert written == []
        assert store.list_deliveries(DeliveryQuery()) == []
    finally:
        store.gate.set()
        server.join(10)
        committer.close()
    acks = [json.loads(line) for chunk in written for line in chunk.splitlines()]
    assert [ack["uuid"] for ack in acks] == uuids
    assert all(ack["ok"] and ack["deliveries"] == 1 for ack in acks)
    assert store.enqueues < len(uuids)  # reads that waited together were committed together
    assert len(store.list_deliveries(DeliveryQuery())) == len(uuids)


def test_failed_write_ends_the_stream_with_its_error_and_keeps_what_was_read(store: GatedStore) -> None:
    """A client that goes away: the write error ends serving, and the events already read are stored."""
    store.gate.set()
    ingestor, committer = _ingestor(store)
    uuids = [uuid.uuid4().hex for _ in range(3)]
    chunks = iter([_line(u) for u in uuids] + [b""])

    def write(data: bytes) -> None:
        raise BrokenPipeError("client went away")

    try:
        with pytest.raises(BrokenPipeError):
            serve_stream(lambda: next(chunks), write, ingestor)
    finally:
        committer.close()
    stored = {d.event_uuid for d in store.list_deliveries(DeliveryQuery())}
    assert uuids[0] in stored
    assert stored <= set(uuids)


def test_stdin_stream_ends_when_standard_output_breaks_while_input_idles(store: GatedStore) -> None:
    """--stdin with the acks' reader gone and standard input open but quiet: serving ends with the write's
    error instead of waiting for input forever."""
    store.gate.set()
    ingestor, committer = _ingestor(store)
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    os.close(out_read)  # nobody reads the acknowledgements
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            serve_stdin(ingestor, in_read, out_write)
        except BaseException as exc:
            errors.append(exc)

    server = threading.Thread(target=serve)
    try:
        os.write(in_write, _line(uuid.uuid4().hex))  # one event, then standard input stays open and idle
        server.start()
        server.join(10)
        assert not server.is_alive(), "still waiting for input after standard output broke"
        assert len(errors) == 1 and isinstance(errors[0], BrokenPipeError)
    finally:
        os.close(in_write)
        server.join(10)
        os.close(in_read)
        os.close(out_write)
        committer.close()
