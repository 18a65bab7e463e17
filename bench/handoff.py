#!/usr/bin/env python3
"""Benchmark: should the parent complete attempts from the reply reader instead of parking a thread on each?

    python bench/handoff.py --attempts 20000 --rounds 3

Today every attempt in flight holds one engine worker thread in the parent, parked on a lock until the
delivery process's reply arrives (``dispatcher.transport.ProcessClient.send``). The alternative would let the
reply-reader thread finish the attempt itself (a callback), so the parent keeps no thread per attempt.
Both sides here use the real ``ProcessClient`` and its delivery processes against the same fast loopback
receiver, with 64 attempts in flight at a time (the default ``--workers``):

- parked: 64 threads, each calling ``ProcessClient.send`` in a loop (what the engine's workers do).
- reader: no worker threads; each reply's callback, on the reply-reader thread, sends the next request.

Measured per round (the two sides interleave, so machine noise hits both alike): attempts per second, and the
parent's CPU time per attempt (``time.process_time``: every thread of this process, the benchmark's own
driving included). What differs is only the hand-off: a thread woken per reply, or a call on the reader.
"""

from __future__ import annotations

import ipaddress
import itertools
import pickle
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import Rounds, add_receiver_option, fast_receiver, parser, print_table, progress, write_result

from dispatcher.messages import AttemptReply, AttemptRequest, Reply
from dispatcher.outbound import OutboundRequest
from dispatcher.transport import ProcessClient

IN_FLIGHT = 64
PROCESSES = 2


class _Callback:
    """A waiter whose ``set`` (called by the reply reader) finishes the attempt there and then."""

    __slots__ = ("done",)

    def __init__(self, done: Callable[[Reply | None], None]) -> None:
        self.done = done

    def set(self, reply: Reply | None) -> None:
        self.done(reply)


class CallbackClient(ProcessClient):
    """``ProcessClient`` with ``submit``: send without waiting; the reply reader calls ``done``."""

    def submit(self, request: OutboundRequest, done: Callable[[Reply | None], None]) -> None:
        child = self._children[next(self._next) % len(self._children)]
        request_id = next(self._ids)
        r = request
        message = AttemptRequest(request_id, r.url, r.body, r.headers, r.timeout_seconds, r.basic_auth)
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        with child.lock:
            child.pending[request_id] = _Callback(done)  # type: ignore[assignment]
        with child.send_lock:
            child.conn.send_bytes(data)


def _request(url: str) -> OutboundRequest:
    headers = {"Content-Type": "application/json", "X-Whisperer-Event": "package.created"}
    return OutboundRequest(url, b'{"event":{"type":"package.created"},"payload":{"id":73}}', headers, 10.0)


def parked(client: ProcessClient, url: str, attempts: int) -> tuple[float, float, int]:
    """Seconds, parent CPU seconds and failures for ``attempts`` sends by ``IN_FLIGHT`` parked threads."""
    tickets = itertools.count()
    failures: list[int] = []
    request = _request(url)

    def work() -> None:
        while next(tickets) < attempts:
            record = client.send(request)
            if record.status_code is None or record.status_code >= 300:
                failures.append(1)

    threads = [threading.Thread(target=work) for _ in range(IN_FLIGHT)]
    cpu, start = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, time.process_time() - cpu, len(failures)


def reader(client: CallbackClient, url: str, attempts: int) -> tuple[float, float, int]:
    """The same with no parked threads: each reply's callback sends the next request."""
    request = _request(url)
    sent = itertools.count()
    lock = threading.Lock()
    finished = threading.Event()
    counts = {"done": 0, "failed": 0}

    def done(reply: Reply | None) -> None:
        with lock:
            counts["done"] += 1
            if not isinstance(reply, AttemptReply) or reply.status_code is None or reply.status_code >= 300:
                counts["failed"] += 1
            if counts["done"] == attempts:
                finished.set()
        if next(sent) < attempts:
            client.submit(request, done)

    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(min(IN_FLIGHT, attempts)):
        if next(sent) < attempts:
            client.submit(request, done)
    if not finished.wait(600):
        raise RuntimeError("the reader side did not finish")
    return time.perf_counter() - start, time.process_time() - cpu, counts["failed"]


def main() -> int:
    p = parser(__doc__ or "", rounds=3)
    p.add_argument("--attempts", type=int, default=20_000)
    add_receiver_option(p)
    args = p.parse_args()
    if args.quick:
        args.attempts, args.rounds = 300, 1
    rounds = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as tmp:
        receiver = fast_receiver(args.receiver, Path(tmp))
        try:
            url = receiver.url("/hook")
            allowed = (ipaddress.ip_network("127.0.0.1/32"),)
            threads = -(-IN_FLIGHT // PROCESSES)
            with (
                ProcessClient(allowed, processes=PROCESSES, threads_per_process=threads) as plain,
                CallbackClient(allowed, processes=PROCESSES, threads_per_process=threads) as callbacks,
            ):
                parked(plain, url, min(200, args.attempts))  # warm up: children started, connections open
                reader(callbacks, url, min(200, args.attempts))
                for i in range(args.rounds):
                    for side, run in (("parked", parked), ("reader", reader)):
                        client = plain if side == "parked" else callbacks
                        seconds, cpu, failed = run(client, url, args.attempts)  # type: ignore[operator]
                        rounds.add(side, args.attempts / seconds)
                        rounds.add(f"{side}-cpu", cpu / args.attempts * 1e6)
                        progress(
                            f"round {i + 1} {side}: {args.attempts / seconds:,.0f} attempts/s, "
                            f"{cpu / args.attempts * 1e6:,.0f} us parent CPU per attempt, {failed} failed"
                        )
        finally:
            receiver.close()
    rows = []
    for side in ("parked", "reader"):
        rows.append((side, f"{rounds.median(side):,.0f}", f"{rounds.median(side + '-cpu'):,.0f}"))
    print_table(("hand-off", "attempts/s (median)", "parent CPU us/attempt (median)"), rows)
    ratio = rounds.median("reader") / rounds.median("parked")
    print(f"reader / parked throughput: {ratio:.2f}x")
    write_result(
        "handoff",
        args.out,
        args,
        {
            "attempts": args.attempts,
            "in_flight": IN_FLIGHT,
            "processes": PROCESSES,
            "receiver": receiver.note,
            "rounds": rounds.as_json(),
            "ratio_reader_to_parked": ratio,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
