"""HTTP attempts in child processes, so delivery uses a second core and never starves ingest.

Python threads share one interpreter lock: with attempts (``requests`` is CPU-hungry) and ingest in one
process, the ingest threads waited for the lock behind every attempt and acknowledgements slowed to the pace
of deliveries (profiled: 674 acks/s with one webhook, against 17,900 with none). ``ProcessClient`` keeps the
engine's ``Client`` interface but sends each ``OutboundRequest`` to a child process running an ``HttpClient``
(the egress guard included) and waits for its ``AttemptRecord``; the engine's worker threads only wait.

A child that dies fails its attempts in flight (they are retried like any connection error) and is started
again. Children ignore SIGINT/SIGTERM/SIGHUP (the parent decides when to stop) and exit when their pipe
closes, including when the parent is killed.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from dispatcher.egress import EgressPolicy
from dispatcher.http import HttpClient, OutboundRequest
from dispatcher.logs import fields, get_logger
from dispatcher.store.base import AttemptRecord
from reconciler.model import TokenAuth

log = get_logger("transport")

_Request = tuple[int, OutboundRequest]
_Reply = tuple[int, AttemptRecord]


def _child_main(
    conn: multiprocessing.connection.Connection,
    allowed: tuple[IPv4Network | IPv6Network, ...],
    threads: int,
) -> None:
    """Runs in the child: attempts requests from the pipe on a thread pool, answers on the same pipe."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    send_lock = threading.Lock()
    with (
        HttpClient(EgressPolicy(allowed), pool_per_endpoint=threads) as client,
        ThreadPoolExecutor(threads, thread_name_prefix="attempt") as pool,
    ):

        def attempt(request_id: int, request: OutboundRequest) -> None:
            record = client.send(request)
            with send_lock:
                conn.send((request_id, record))

        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the parent died
            if message is None:
                return  # asked to stop: the pool finishes the attempts in flight first
            request_id, request = message
            pool.submit(attempt, request_id, request)


class _Child:
    def __init__(self, ctx: Any, allowed: tuple[IPv4Network | IPv6Network, ...], threads: int) -> None:
        parent_end, child_end = ctx.Pipe()
        self.conn: multiprocessing.connection.Connection = parent_end
        self.process = ctx.Process(
            target=_child_main, args=(child_end, allowed, threads), name="dispatch-delivery", daemon=True
        )
        self.process.start()
        child_end.close()
        self.pending: dict[int, Future[AttemptRecord]] = {}
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()  # a Connection's send is not safe from several threads at once
        self.alive = True


class ProcessClient:
    """The engine's ``Client`` with attempts made in ``processes`` child processes. ``close()`` stops them.

    ``fetch_token`` and ``post_json`` (rare: token flows, callbacks) run in this process on a local client.
    """

    def __init__(
        self,
        allowed: tuple[IPv4Network | IPv6Network, ...],
        *,
        processes: int = 1,
        threads_per_process: int = 32,
    ) -> None:
        self._allowed = allowed
        self._threads = threads_per_process
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        self._ids = itertools.count(1)
        self._next = itertools.count()
        self._closed = False
        self._local = HttpClient(EgressPolicy(allowed))
        self._children = [self._spawn(i) for i in range(processes)]

    def _spawn(self, index: int) -> _Child:
        child = _Child(self._ctx, self._allowed, self._threads)
        threading.Thread(
            target=self._read_replies, args=(index, child), name=f"dispatch-replies-{index}", daemon=True
        ).start()
        log.info("transport.child_started", extra=fields(index=index, pid=child.process.pid))
        return child

    def _read_replies(self, index: int, child: _Child) -> None:
        while True:
            try:
                request_id, record = child.conn.recv()
            except (EOFError, OSError):
                break
            with child.lock:
                future = child.pending.pop(request_id, None)
            if future is not None:
                future.set_result(record)
        with child.lock:
            child.alive = False
            orphans = list(child.pending.values())
            child.pending.clear()
        now = time.time()
        for future in orphans:
            future.set_result(AttemptRecord(now, 0.0, error="delivery process exited during the attempt"))
        if not self._closed:
            log.error("transport.child_died", extra=fields(index=index, exitcode=child.process.exitcode))
            self._children[index] = self._spawn(index)

    def send(self, request: OutboundRequest) -> AttemptRecord:
        """Make one attempt in a child process; never raises for delivery problems."""
        children = self._children
        child = children[next(self._next) % len(children)]
        request_id = next(self._ids)
        future: Future[AttemptRecord] = Future()
        with child.lock:
            if not child.alive:
                return AttemptRecord(time.time(), 0.0, error="delivery process unavailable")
            child.pending[request_id] = future
        try:
            with child.send_lock:
                child.conn.send((request_id, request))
        except (OSError, ValueError) as exc:
            with child.lock:
                child.pending.pop(request_id, None)
            return AttemptRecord(time.time(), 0.0, error=f"delivery process unavailable: {exc}")
        return future.result()

    def fetch_token(self, auth: TokenAuth, password: str, timeout_seconds: float) -> str:
        return self._local.fetch_token(auth, password, timeout_seconds)

    def post_json(self, url: str, payload: dict[str, Any], timeout_seconds: float) -> AttemptRecord:
        return self._local.post_json(url, payload, timeout_seconds)

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children if c.process.pid is not None]

    def close(self) -> None:
        self._closed = True
        for child in self._children:
            # A message, not conn.close(): closing an fd another thread is reading does not wake the reader,
            # so the child would never see EOF.
            with child.send_lock, contextlib.suppress(OSError, ValueError):
                child.conn.send(None)
        for child in self._children:
            child.process.join(timeout=30)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(timeout=5)
            child.conn.close()
        self._local.close()

    def __enter__(self) -> ProcessClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_processes() -> int:
    """One delivery process per spare core, at least one, at most four."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))
