#!/usr/bin/env python3
"""Benchmark: delivery throughput, events in through the socket to a fast local receiver (SPEC section 9).

    python bench/throughput.py --events 20000 --rounds 3

What is measured, per round (rounds interleave the two sides, so machine noise hits both alike):

- dispatcher: a fresh ``dispatch run`` (default workers and per-endpoint limit) with one active, signed
  webhook pointing at the receiver. N events are published on one socket connection by a pipelining client;
  each is durably stored before its ack, then delivered. Time runs from the first byte published to the
  moment the last delivery was recorded as delivered in the store (its ``updated_at``; the store file is
  polled read-only to see when all N are done). Rate = N / that time.
- baseline: one thread with a ``requests.Session`` (``trust_env = False``) POSTing the same N bodies with the
  same headers (signatures computed beforehand) to the same receiver, one after the other.

The receiver is nginx answering 204 (one worker, no access log) when installed, else the Python receiver in
``bench/receiver.py`` (the output says so). Target: dispatcher >= 0.8 x baseline (medians).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import requests
from common import (
    SECRET_VALUE,
    Dispatcher,
    Nginx,
    PythonReceiver,
    Rounds,
    StoreWatch,
    Target,
    add_receiver_option,
    event_line,
    fast_receiver,
    one_webhook_config,
    parser,
    print_table,
    print_targets,
    progress,
    publish_pipelined,
    write_result,
)

from dispatcher.protocol import ParsedEvent, parse_line
from dispatcher.signing import delivery_headers

TARGET_RATIO = 0.8
WEBHOOK = "bench-throughput"
EXTRA_HEADERS = {"X-Source": "oms", "X-Tenant": "tenant-0"}  # what webhook_yaml(variant=0) configures


def baseline_requests(lines: Sequence[bytes], url: str, timeout_seconds: float) -> float:
    """Seconds for one thread to POST every event's body, with its delivery headers, through one Session."""
    now = int(time.time())
    prepared = []
    for i, line in enumerate(lines):
        parsed = parse_line(line.rstrip(b"\n"), i + 1)
        assert isinstance(parsed, ParsedEvent)
        headers = delivery_headers(
            event_type=parsed.type, msg_id=parsed.uuid, timestamp=now, body=parsed.body, secret=SECRET_VALUE
        )
        prepared.append((parsed.body, {**headers, **EXTRA_HEADERS}))
    deadline = time.monotonic() + timeout_seconds
    with requests.Session() as session:
        session.trust_env = False
        start = time.perf_counter()
        for body, headers in prepared:
            response = session.post(url, data=body, headers=headers, timeout=10)
            if not 200 <= response.status_code < 300:
                raise RuntimeError(f"baseline: receiver answered {response.status_code}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline: not done within {timeout_seconds:g}s")
        return time.perf_counter() - start


def dispatcher_round(workdir: Path, url: str, lines: Sequence[bytes], timeout_seconds: float) -> float:
    """Seconds from the first byte published to the last delivery recorded, for a fresh dispatcher."""
    config = one_webhook_config(workdir, WEBHOOK, url)
    n = len(lines)
    with Dispatcher(workdir, config) as dispatcher:
        result = publish_pipelined(dispatcher.socket_path, b"".join(lines), timeout_seconds)
        if result.accepted != n:
            raise RuntimeError(f"{result.accepted} of {n} events accepted: {result.first_rejection}")
        with StoreWatch(dispatcher.store_path) as store:
            if not store.wait_delivered(n, timeout_seconds):
                raise RuntimeError(f"only {store.counts()} of {n} delivered:\n{dispatcher.log_tail()}")
            count, last = store.delivered()
            leftovers = {k: v for k, v in store.counts().items() if k != "delivered"}
        if leftovers:
            progress(f"  warning: deliveries not delivered: {leftovers}")
        assert last is not None
        progress(f"  dispatcher: acks in {result.last_ack_seconds:.2f}s, {count} delivered")
        return float(last) - result.started


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__ or "", rounds=3)
    p.add_argument("--events", type=int, help="events per round (default 20000; 300 with --quick)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a round may take at most")
    add_receiver_option(p)
    args = p.parse_args(argv)
    n = args.events or (300 if args.quick else 20_000)
    rounds = 1 if args.quick else args.rounds
    series = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        receiver: Nginx | PythonReceiver = fast_receiver(args.receiver, Path(tmp))
        with receiver:
            progress(f"receiver: {receiver.note}; {n} events per round, {rounds} round(s)")
            url = receiver.url(f"/hook/{WEBHOOK}")
            for r in range(rounds):
                lines = [event_line(i) for i in range(n)]
                base = baseline_requests(lines, url, args.timeout)
                series.add("baseline_per_second", n / base)
                workdir = Path(tmp) / f"round-{r}"
                workdir.mkdir()
                took = dispatcher_round(workdir, url, lines, args.timeout)
                series.add("dispatcher_per_second", n / took)
                progress(
                    f"round {r + 1}/{rounds}: baseline {n / base:,.0f}/s, dispatcher {n / took:,.0f}/s",
                )
            receiver_note = receiver.note
            receiver_kind = receiver.kind

    dispatcher_rate = series.median("dispatcher_per_second")
    baseline_rate = series.median("baseline_per_second")
    ratio = dispatcher_rate / baseline_rate
    print()
    print_table(
        ["events", "side", "median deliveries/s", "rounds"],
        [
            [n, "dispatch run (socket -> store -> HTTP)", dispatcher_rate,
             " ".join(f"{v:,.0f}" for v in series.values["dispatcher_per_second"])],
            [n, "requests.Session loop, 1 thread", baseline_rate,
             " ".join(f"{v:,.0f}" for v in series.values["baseline_per_second"])],
        ],
    )  # fmt: skip
    targets = [
        Target(
            what="delivery throughput",
            measured=dispatcher_rate,
            unit="deliveries/s",
            baseline=baseline_rate,
            baseline_what="requests.Session loop",
            target=f">= {TARGET_RATIO:g}x baseline",
            met=ratio >= TARGET_RATIO,
            ratio=ratio,
        )
    ]
    print_targets(targets)
    write_result(
        "throughput",
        args.out,
        args,
        {"events": n, "receiver": receiver_kind, "receiver_note": receiver_note, "series": series.as_json(),
         "ratio": round(ratio, 3), "targets": targets},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
