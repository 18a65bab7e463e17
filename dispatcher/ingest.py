"""Ingest: NDJSON lines from a stream, durably committed in groups, acknowledged in order.

A reader turns whatever bytes are available into complete lines, parses and routes each one, and hands the
batch to the ``Committer``. The committer merges every batch waiting at that moment into one store
transaction (group commit), then answers each batch. The reader writes the acknowledgements in input order.
So a pipelining client gets one transaction per burst, and a one-at-a-time client one per line.

Containment: whatever one line holds, its failure is that line's rejection. A line whose handling raises is
rejected alone; a group commit that fails with anything but a ``StoreError`` is bisected until the events
that cannot be stored are found, and only they are rejected (a ``StoreError`` still rejects the group: "retry
this event"). If the committer thread itself dies, every waiting batch is rejected rather than left waiting,
and the supervisor (``dispatcher.supervise``) ends the process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dispatcher.config import Snapshot
from dispatcher.errors import StoreError
from dispatcher.intake import Admission
from dispatcher.logs import fields, get_logger
from dispatcher.metrics import Metrics
from dispatcher.protocol import (
    BadLine,
    ParsedEvent,
    ack_accepted,
    ack_duplicate,
    ack_rejected,
    parse_line,
)
from dispatcher.store.base import EnqueueResult, Lease, NewEvent, Store
from dispatcher.supervise import Spawn, describe, start_thread

log = get_logger("ingest")

RETRY = "not stored: the store failed; retry this event"
UNSTORABLE = "not stored: this event cannot be stored"
STOPPED = "not stored: the dispatcher stopped ingesting; retry this event"


def route_event(event: ParsedEvent, snapshot: Snapshot, line_no: int) -> NewEvent | BadLine:
    """Which webhooks get a delivery: the named one (``webhook``), else every active match."""
    if event.webhook is not None:
        if snapshot.webhook(event.webhook) is None:
            return BadLine(line_no, f"unknown webhook {event.webhook!r}")
        names: tuple[str, ...] = (event.webhook,)
    else:
        names = tuple(h.name for h in snapshot.table.route(event.type, event.filter))
    return NewEvent(uuid=event.uuid, type=event.type, body=event.body, webhooks=names)


@dataclass
class _Batch:
    events: list[NewEvent]
    done: threading.Event = field(default_factory=threading.Event)
    #: One per event, in order: what the store said, or why the event was not stored.
    results: list[EnqueueResult | str] | None = None

    def finish(self, results: list[EnqueueResult | str]) -> None:
        if not self.done.is_set():
            self.results = results
            self.done.set()


class DeliveryIntake(Protocol):
    """Where the committer hands new deliveries (``dispatcher.intake.Intake``; tests pass a fake)."""

    def plan(self, webhooks: Sequence[str]) -> Admission:
        """Whether to create the next commit's deliveries leased, and which to leave unleased."""
        ...

    def admit(self, leases: Sequence[Lease]) -> object:
        """Take the leases the commit created."""
        ...


class Committer:
    """One thread that group-commits batches of events and hands their new leases to the intake."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        intake: DeliveryIntake,
        metrics: Metrics,
        *,
        spawn: Spawn = start_thread,
        on_committed: Callable[[int], None] | None = None,
    ) -> None:
        """``on_committed(n)``: told after each commit that created ``n`` > 0 deliveries (the ingest
        process tells the engine's process that due work is in the store)."""
        self._store = store
        self._clock = clock
        self._intake = intake
        self._metrics = metrics
        self._on_committed = on_committed
        self._queue: queue.Queue[_Batch | None] = queue.Queue()
        self._current: list[_Batch] = []
        self._dead = False
        self._thread = spawn("dispatch-committer", self._run)

    def submit(self, events: list[NewEvent]) -> _Batch:
        """Queue events for the next group commit; ``batch.done`` is set once they are durable (or failed).
        Results are in input order."""
        batch = _Batch(events)
        if events:
            self._queue.put(batch)
            if self._dead:  # nobody will take it
                self._fail_waiting()
        else:
            batch.finish([])
        return batch

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            self._dead = True
            self._fail_waiting()  # their clients get a rejection now rather than wait for ever
            raise

    def _fail_waiting(self) -> None:
        for batch in self._current:
            batch.finish([STOPPED] * len(batch.events))
        while True:
            try:
                batch_or_stop = self._queue.get_nowait()
            except queue.Empty:
                return
            if batch_or_stop is not None:
                batch_or_stop.finish([STOPPED] * len(batch_or_stop.events))

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batches = [first]
            size = len(first.events)
            stop = False
            while size < 5000:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batches.append(more)
                size += len(more.events)
            self._current = batches
            self._commit(batches)
            self._current = []
            if stop:
                return

    def _commit(self, batches: list[_Batch]) -> None:
        events = [e for b in batches for e in b.events]
        # New deliveries go straight to the engine when it has room; otherwise the scheduler leases them.
        admission = self._intake.plan([name for e in events for name in e.webhooks])
        results = self._store_isolating(events, admission)
        offset = 0
        for b in batches:
            b.finish(results[offset : offset + len(b.events)])
            offset += len(b.events)
        leases = [lease for r in results if isinstance(r, EnqueueResult) for lease in r.leases]
        if leases:
            self._intake.admit(leases)
        if self._on_committed is not None:
            created = sum(len(r.delivery_ids) for r in results if isinstance(r, EnqueueResult))
            if created:
                self._on_committed(created)

    def _store_isolating(self, events: list[NewEvent], admission: Admission) -> list[EnqueueResult | str]:
        """Enqueue ``events`` in one transaction; if that fails with anything but a StoreError, in halves
        (recursively) so that only the events that cannot be stored are rejected."""
        try:
            return list(
                self._store.enqueue(events, self._clock(), admission.lease_seconds, admission.unleased)
            )
        except StoreError as exc:
            log.error("ingest.store_error", extra=fields(events=len(events), error=str(exc)))
            return [RETRY] * len(events)
        except Exception as exc:
            if len(events) == 1:
                log.error("ingest.unstorable", extra=fields(uuid=events[0].uuid, error=describe(exc)))
                return [UNSTORABLE]
        middle = len(events) // 2
        return self._store_isolating(events[:middle], admission) + self._store_isolating(
            events[middle:], admission
        )


class LineReader:
    """Splits a byte stream into lines, enforcing a maximum line length without buffering past it."""

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line: drop bytes until its newline
        self.line_no = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes | None]]:
        """Complete lines in ``data`` as (line number, bytes); bytes None for an over-long line."""
        out: list[tuple[int, bytes | None]] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            chunk = data[start:nl]
            start = nl + 1
            self.line_no += 1
            if self._discarding or len(self._buffer) + len(chunk) > self._max:
                out.append((self.line_no, None))
            else:
                out.append((self.line_no, bytes(self._buffer + chunk) if self._buffer else bytes(chunk)))
            self._buffer.clear()
            self._discarding = False
        rest = data[start:]
        if not self._discarding:
            if len(self._buffer) + len(rest) > self._max:
                self._buffer.clear()
                self._discarding = True
            else:
                self._buffer += rest
        return out

    @property
    def discarding(self) -> bool:
        """Inside an over-long line: the bytes being read are dropped until its newline."""
        return self._discarding

    def finish(self) -> list[tuple[int, bytes | None]]:
        """At EOF: a last line without a newline still counts."""
        if self._discarding:
            self._discarding = False
            self.line_no += 1
            return [(self.line_no, None)]
        if self._buffer.strip():
            self.line_no += 1
            line = bytes(self._buffer)
            self._buffer.clear()
            return [(self.line_no, line)]
        return []


class Ingestor:
    """Turns lines into acknowledgements: parse, route, commit, answer. Shared by every connection."""

    def __init__(
        self,
        committer: Committer,
        config: Callable[[], Snapshot],
        metrics: Metrics,
        max_line_bytes: int,
    ) -> None:
        self._committer = committer
        self._config = config
        self._metrics = metrics
        self.max_line_bytes = max_line_bytes

    def start(
        self,
        lines: list[tuple[int, bytes | None]],
        charge: Callable[[int, int], None] | None = None,
    ) -> Callable[[], bytes]:
        """Parse and route these lines and queue their events for commit, without waiting; the function
        returned waits until they are durable and gives their acknowledgement lines, in order.

        ``charge(lines, bytes)`` is told how many lines were rejected and how many bytes they held (an
        over-long line counts ``max_line_bytes``): the budget the connection spends (its peer's)."""
        snapshot = self._config()
        answers: list[bytes | None] = []
        events: list[NewEvent] = []
        slots: list[int] = []
        rejected_bytes = 0
        for line_no, raw in lines:
            if raw is None:
                rejected_bytes += self.max_line_bytes
                answers.append(
                    ack_rejected(line_no, f"line too long (more than {self.max_line_bytes} bytes)")
                )
                continue
            if not raw.strip():
                rejected_bytes += len(raw)
                answers.append(ack_rejected(line_no, "empty line"))
                continue
            try:
                parsed = parse_line(raw, line_no)
                routed = parsed if isinstance(parsed, BadLine) else route_event(parsed, snapshot, line_no)
            except Exception as exc:  # a bug: this line's failure, never the connection's
                log.error("ingest.line_failed", extra=fields(line=line_no, error=describe(exc)))
                routed = BadLine(line_no, "internal error while handling this line")
            if isinstance(routed, BadLine):
                rejected_bytes += len(raw)
                answers.append(ack_rejected(routed.line, routed.error))
                continue
            slots.append(len(answers))
            answers.append(None)
            events.append(routed)
        rejected = len(answers) - len(events)
        if rejected:
            self._metrics.events_rejected.inc(rejected)
            if charge is not None:
                charge(rejected, rejected_bytes)
        batch = self._committer.submit(events)
        return lambda: self._answers(lines, answers, slots, batch)

    def _answers(
        self,
        lines: list[tuple[int, bytes | None]],
        answers: list[bytes | None],
        slots: list[int],
        batch: _Batch,
    ) -> bytes:
        batch.done.wait()
        assert batch.results is not None
        duplicates = rejected = 0
        for slot, result in zip(slots, batch.results, strict=True):  # answers[i] answers lines[i]
            if isinstance(result, str):
                rejected += 1
                answers[slot] = ack_rejected(lines[slot][0], result)
            elif result.duplicate:
                duplicates += 1
                answers[slot] = ack_duplicate(result.uuid)
            else:
                answers[slot] = ack_accepted(result.uuid, len(result.delivery_ids))
        self._metrics.events_accepted.inc(len(slots) - duplicates - rejected)
        if duplicates:
            self._metrics.events_duplicate.inc(duplicates)
        if rejected:
            self._metrics.events_rejected.inc(rejected)
        return b"".join(a for a in answers if a is not None)
