"""The ingest process: the event socket, parsing, routing and group commit, in a process of their own.

Why: in one process, ingest shares its interpreter lock with every attempt's bookkeeping (the reply reader,
the workers, the outcome writer). While deliveries ran at full speed, acks fell to a third of idle ingest
(``bench/ingest.py``). In a process of its own, ingest keeps an interpreter lock of its own.

How it runs:

- ``dispatch run`` forks it first, before any thread starts and before the table is loaded (the child
  shares the interpreter's pages copy-on-write). With 10,000 webhooks and a million pending it still adds
  about 20 MB PSS (``bench/memory.py``; forked after the load it was the same), not yet explained. It waits
  for ``start``, which brings the routing part of the table: by then the parent has opened the store
  (migrated it, reclaimed the leases it found). The child then opens its own connection to the same store,
  listens on the event socket and answers ``listening``.
- New deliveries are created unleased and due now; after each commit that created some, the child tells the
  parent (``committed``), whose scheduler leases them into the engine. An ack still follows the durable
  commit, in input order on each connection: the guarantees do not change.
- The parent sends every new routing table (``snapshot``), asks for the ingest counters when ``/metrics`` is
  scraped (``totals``), and says ``stop``: the child stops reading, gives its clients the usual bounded time
  for their acks, commits what it read, answers ``stopped`` and exits 0.
- Crash-only, both ways. A supervised thread of the child that dies is reported (``fault``) and fails the
  parent's supervisor: ``/healthz`` 503, exit 70. So does the child's exit at any moment the parent did not
  ask for it. The parent dying kills the child (``PR_SET_PDEATHSIG``). A SIGTERM or SIGINT that reaches the
  child (systemd signals the whole control group; a terminal the whole process group) is passed on to the
  parent, which stops everything in its order.

Messages are tuples pickled over a socket pair (``multiprocessing.connection``): both ends run the same code.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from dispatcher.config import Snapshot
from dispatcher.errors import DispatcherError, SocketPathError, StoreError
from dispatcher.ingest import Committer, Ingestor
from dispatcher.intake import UNLEASED, Admission
from dispatcher.logs import fields, get_logger
from dispatcher.metrics import IngestTotals, Metrics
from dispatcher.store.base import Store
from dispatcher.supervise import EXIT_INTERNAL_FAILURE, Spawn, Supervisor, describe
from reconciler.model import Webhook
from reconciler.routing import RoutingTable

log = get_logger("ingest")

#: How long the parent waits for ``listening`` after ``start`` (the child opens the store and the socket).
START_SECONDS = 30.0
#: How long a ``/metrics`` scrape waits for the child's counters before showing the last ones it has.
TOTALS_SECONDS = 1.0
#: How often the child's main loop looks at its signal and fault flags between messages.
_POLL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1
#: The errors a child reports at start-up, raised again by the parent as themselves (their exit codes).
_ERRORS: dict[str, type[DispatcherError]] = {
    cls.__name__: cls for cls in (DispatcherError, SocketPathError, StoreError)
}


class IngestStopped(DispatcherError):
    """The ingest process ended before it started listening."""


class _Unleased:
    """The child's intake: every delivery created unleased (the parent's scheduler leases them)."""

    def plan(self, webhooks: object) -> Admission:
        return UNLEASED

    def admit(self, leases: object) -> None:  # pragma: no cover - nothing is ever leased here
        raise AssertionError("the ingest process creates no leases")


class _Link:
    """One end of the socket pair; ``send`` from any thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self.conn.send(message)


# -- the child -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSetup:
    """What the child needs beyond the first table: how to open the store and the server, and the line limit.

    ``open_store()`` opens the parent's store without its lock; ``serve(ingestor, metrics, spawn)`` builds the
    socket server (not yet started)."""

    open_store: Callable[[], contextlib.AbstractContextManager[Store]]
    serve: Callable[[Ingestor, Metrics, Spawn], Any]
    max_line_bytes: int
    clock: Callable[[], float] = time.time


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the parent dies (Linux; elsewhere the socket pair's EOF tells)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(EXIT_INTERNAL_FAILURE)


def _child(link: _Link, setup: ChildSetup) -> int:
    signalled: list[str] = []
    fault_sent = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signalled.append(signal.Signals(signum).name)  # the main loop passes it on (no sending here)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the parent's; it sends the table
    try:
        first = link.conn.recv()
    except EOFError:
        return 0  # the parent ended before starting us
    if first[0] != "start":
        return 0  # "stop": the parent failed to start
    supervisor = Supervisor()
    metrics = Metrics()
    current: list[Snapshot] = [first[1]]
    try:
        with contextlib.ExitStack() as stack:
            try:
                store = stack.enter_context(setup.open_store())
                committer = Committer(
                    store,
                    setup.clock,
                    _Unleased(),
                    metrics,
                    spawn=supervisor.spawn,
                    on_committed=lambda n: link.send(("committed", n)),
                )
                stack.callback(committer.close)
                ingestor = Ingestor(committer, lambda: current[0], metrics, setup.max_line_bytes)
                server = setup.serve(ingestor, metrics, supervisor.spawn)
            except DispatcherError as exc:
                link.send(("error", type(exc).__name__, str(exc)))
                return 1
            stack.callback(server.close)
            stack.callback(supervisor.stopping)
            server.start()
            link.send(("listening", os.getpid()))
            while True:
                while signalled:
                    link.send(("signal", signalled.pop(0)))
                if supervisor.fault is not None and not fault_sent:
                    fault_sent = True
                    link.send(("fault", supervisor.fault.thread, supervisor.fault.reason))
                if not link.conn.poll(_POLL_SECONDS):
                    continue
                try:
                    message = link.conn.recv()
                except EOFError:
                    return EXIT_INTERNAL_FAILURE  # the parent is gone (PR_SET_PDEATHSIG may not exist)
                if message[0] == "snapshot":
                    current[0] = message[1]
                elif message[0] == "totals":
                    link.send(("totals", message[1], metrics.ingest_totals()))
                elif message[0] == "stop":
                    break
        # Stopped in order: no more reading (the clients take their acks), the last commits, then the answer.
        link.send(("stopped", metrics.ingest_totals()))
        return 0
    except Exception as exc:
        log.error("ingest.process_failed", extra=fields(error=describe(exc)))
        with contextlib.suppress(OSError, ValueError):
            link.send(("fault", "ingest process", describe(exc)))
        return EXIT_INTERNAL_FAILURE


def _routing_only(snapshot: Snapshot) -> Snapshot:
    """What ingest needs of a snapshot, to send to the child: each webhook's name, event types, status and
    filters, in a table of their own (a fraction of the whole definitions' memory), and never a secret."""
    hooks = {
        name: Webhook(h.name, "", h.event_types, h.active, match=h.match, scope=h.scope)
        for name, h in snapshot.table.webhooks.items()
    }
    return Snapshot(RoutingTable(hooks, snapshot.table.revision), {}, snapshot.revision)


# -- the parent ----------------------------------------------------------------------------------------------


class IngestProcess:
    """The parent's handle on the ingest child: ``fork`` it, ``start`` it, send tables, ``close`` it.

    ``on_committed()``, ``on_signal(name)`` and ``on_fault(thread, reason)`` are called on the link's reader
    thread (started by ``start`` through ``spawn``)."""

    def __init__(self, pid: int, link: _Link) -> None:
        self.pid = pid
        self._link = link
        self._lock = threading.Condition()
        self._listening = False
        self._error: tuple[str, str] | None = None
        self._ended = False
        self._stopping = False
        self._status: int | None = None
        self._totals = IngestTotals()
        self._totals_seq = 0
        self._asked_seq = 0
        self._reap_lock = threading.Lock()
        self._sent: Snapshot | None = None  # the snapshot whose table the child routes with

    @classmethod
    def fork(cls, setup: ChildSetup) -> IngestProcess | None:
        """Fork the child; None where that is not safe (threads are running: a test, an embedding)."""
        if threading.active_count() > 1 or not hasattr(os, "fork"):
            return None
        parent_end, child_end = socket.socketpair()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()  # or the child writes the parent's buffered lines again
        parent = os.getpid()
        gc.freeze()  # the child's collections must not write to the pages it shares with the parent
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's side is covered by the end-to-end tests
            code: int = EXIT_INTERNAL_FAILURE
            try:
                parent_end.close()
                _die_with_parent(parent)
                code = _child(_Link(Connection(child_end.detach())), setup)
            finally:
                os._exit(code)
        child_end.close()
        return cls(pid, _Link(Connection(parent_end.detach())))

    def start(
        self,
        snapshot: Snapshot,
        spawn: Spawn,
        on_committed: Callable[[], None],
        on_signal: Callable[[str], None],
        on_fault: Callable[[str, str], None],
    ) -> None:
        """Let the child open the store and listen; returns once it listens. Raises the child's start-up
        error as itself (a ``SocketPathError``, a ``StoreError``), or ``IngestStopped``."""
        self._on_committed = on_committed
        self._on_signal = on_signal
        self._on_fault = on_fault
        self._sent = snapshot
        self._link.send(("start", _routing_only(snapshot)))
        spawn("dispatch-ingest-link", self._read)
        deadline = time.monotonic() + START_SECONDS
        with self._lock:
            while not (self._listening or self._ended or self._error):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            if self._error is not None:
                kind, message = self._error
                raise _ERRORS.get(kind, DispatcherError)(message)
            if not self._listening:
                raise IngestStopped(f"the ingest process did not start listening ({self._why_ended()})")
        log.info("ingest.process_started", extra=fields(pid=self.pid))

    def send_snapshot(self, snapshot: Snapshot) -> None:
        """Route with ``snapshot``'s table from now on (sent when the table changed; never its secrets)."""
        if self._sent is not None and snapshot.table is self._sent.table:
            return
        self._sent = snapshot
        with contextlib.suppress(OSError, ValueError):  # a child that is gone is reported by the reader
            self._link.send(("snapshot", _routing_only(snapshot)))

    def totals(self) -> IngestTotals:
        """The child's counters now (or the last ones it sent, if it does not answer in time)."""
        with self._lock:
            if self._ended:
                return self._totals
            self._asked_seq += 1
            seq = self._asked_seq
        with contextlib.suppress(OSError, ValueError):
            self._link.send(("totals", seq))
        deadline = time.monotonic() + TOTALS_SECONDS
        with self._lock:
            while self._totals_seq < seq and not self._ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return self._totals

    def close(self, timeout: float = 5.0) -> None:
        """Ask the child to stop and wait for it (its clients' acks take at most a second or so); kill it
        when it has not exited within ``timeout``. Idempotent."""
        with self._lock:
            self._stopping = True
        with contextlib.suppress(OSError, ValueError):
            self._link.send(("stop",))
        if not self._wait_exit(timeout):
            log.warning("ingest.process_killed", extra=fields(pid=self.pid, after_seconds=timeout))
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._wait_exit(5.0)
        with contextlib.suppress(OSError):
            self._link.conn.close()

    def _wait_exit(self, timeout: float) -> bool:
        """Reap the child if it exits within ``timeout``; whether it has."""
        deadline = time.monotonic() + timeout
        while True:
            with self._reap_lock:  # never held while blocking: close() and the reader may both look
                if self._status is None:
                    try:
                        pid, status = os.waitpid(self.pid, os.WNOHANG)
                    except ChildProcessError:
                        pid, status = self.pid, -1
                    if pid == self.pid:
                        self._status = status
                if self._status is not None:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _why_ended(self) -> str:
        status = self._status
        if status is None:
            return "it did not answer in time"
        if status == -1:
            return "it exited"
        if os.WIFSIGNALED(status):
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"exit status {os.WEXITSTATUS(status)}"

    def _read(self) -> None:
        """The link's reader: dispatch the child's messages until it closes its end."""
        try:
            for message in _messages(self._link.conn):
                kind = message[0]
                if kind == "committed":
                    self._on_committed()
                elif kind in ("totals", "stopped"):
                    with self._lock:
                        self._totals = message[-1]
                        if kind == "totals":
                            self._totals_seq = max(self._totals_seq, message[1])
                        self._lock.notify_all()
                elif kind == "listening":
                    with self._lock:
                        self._listening = True
                        self._lock.notify_all()
                elif kind == "error":
                    with self._lock:
                        self._error = (message[1], message[2])
                        self._lock.notify_all()
                elif kind == "signal":
                    self._on_signal(message[1])
                elif kind == "fault":
                    self._on_fault(f"ingest process {self.pid}: {message[1]}", message[2])
        finally:
            self._wait_exit(1.0)  # its end closed: it exited, or is about to (for the reason below)
            with self._lock:
                self._ended = True
                stopping = self._stopping
                self._lock.notify_all()
            if not stopping and self._listening:
                self._on_fault(f"ingest process {self.pid}", f"ended unexpectedly ({self._why_ended()})")


def _messages(conn: Connection) -> Iterator[tuple[Any, ...]]:
    while True:
        try:
            yield conn.recv()
        except (EOFError, OSError):
            return
