#!/usr/bin/env python3
"""Benchmark: latency from publishing an event to its arrival at a receiver, at a steady rate (SPEC 9).

    python bench/latency.py --rate 200 --seconds 10 --rounds 3

Each event carries ``payload.sent_at`` = ``time.time()`` taken just before its line is written to the socket.
The receiver (``bench/receiver.py``, a ThreadingHTTPServer in its own process, so it shares no GIL with the
sender) takes the arrival time as soon as a POST's body is read and records ``arrival - sent_at``.

- dispatcher: a fresh ``dispatch run`` with one signed webhook pointing at the receiver; one socket
  connection, one line every 1/rate s on an absolute schedule (acks are read by another thread). So each
  event is one ingest commit (fsync), one lease and one HTTP attempt.
- baseline: one thread with a ``requests.Session`` POSTing the same kind of body straight to the receiver at
  the same rate, so the reader sees what the sender and receiver cost without the dispatcher.

A warm-up of 0.5 s (events without ``sent_at``) opens the connections first. Reported: p50, p99 and max per
round; the medians over rounds count. Targets: dispatcher p50 <= 5 ms and p99 <= 25 ms.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests
from common import (
    Dispatcher,
    PythonReceiver,
    Rounds,
    Target,
    event_line,
    one_webhook_config,
    parser,
    percentile,
    poll_until,
    print_table,
    print_targets,
    progress,
    write_result,
)

TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0
WARMUP_SECONDS = 0.5
WEBHOOK = "bench-latency"


def _paced(rate: float, count: int, deadline: float) -> Iterator[int]:
    """0 .. count-1, each yielded at its slot of an absolute schedule (no drift); stops at ``deadline``."""
    start = time.perf_counter()
    for i in range(count):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        if time.monotonic() > deadline:
            return
        yield i


def _wait_count(receiver: PythonReceiver, n: int, timeout_seconds: float) -> dict[str, Any]:
    """The receiver's stats once it has counted ``n`` POSTs, or once ``timeout_seconds`` have passed."""
    poll_until(lambda: receiver.stats()["count"] >= n, timeout_seconds, 0.1)
    return receiver.stats()


def baseline_round(receiver: PythonReceiver, url: str, rate: float, seconds: float) -> list[float]:
    warmup, n = int(rate * WARMUP_SECONDS), int(rate * seconds)
    receiver.reset()
    headers = {"Content-Type": "application/json", "X-Whisperer-Event": "package.created"}
    with requests.Session() as session:
        session.trust_env = False
        for i in _paced(rate, warmup + n, time.monotonic() + 3 * seconds + 30):
            line = event_line(i, sent_at=time.time() if i >= warmup else None)
            session.post(url, data=line.rstrip(b"\n"), headers=headers, timeout=10)
    stats = _wait_count(receiver, warmup + n, 30)
    return list(stats["latencies_ms"])


def dispatcher_round(
    workdir: Path, receiver: PythonReceiver, url: str, rate: float, seconds: float
) -> list[float]:
    warmup, n = int(rate * WARMUP_SECONDS), int(rate * seconds)
    config = one_webhook_config(workdir, WEBHOOK, url)
    receiver.reset()
    with Dispatcher(workdir, config) as dispatcher, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(dispatcher.socket_path))
        sock.settimeout(60)
        acks: list[int] = [0, 0]  # lines acknowledged, of which accepted

        def read_acks() -> None:
            with sock.makefile("rb") as stream:
                for line in stream:
                    acks[0] += 1
                    acks[1] += json.loads(line).get("ok") is True
                    if acks[0] >= warmup + n:
                        return

        reader = threading.Thread(target=read_acks, name="bench-acks", daemon=True)
        reader.start()
        for i in _paced(rate, warmup + n, time.monotonic() + 3 * seconds + 30):
            sock.sendall(event_line(i, sent_at=time.time() if i >= warmup else None))
        reader.join(60)
        if acks[1] != warmup + n:
            raise RuntimeError(f"{acks[1]} of {warmup + n} events accepted:\n{dispatcher.log_tail()}")
        stats = _wait_count(receiver, warmup + n, 60)
    return list(stats["latencies_ms"])


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__ or "", rounds=3)
    p.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    p.add_argument("--seconds", type=float, help="seconds per round (default 10; 2 with --quick)")
    args = p.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    rounds = 1 if args.quick else args.rounds
    series = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, PythonReceiver(Path(tmp)) as receiver:
        url = receiver.url(f"/hook/{WEBHOOK}")
        progress(f"receiver: {receiver.note}; {args.rate:g} events/s for {seconds:g}s, {rounds} round(s)")
        for r in range(rounds):
            for side in ("baseline", "dispatcher"):
                if side == "baseline":
                    latencies = baseline_round(receiver, url, args.rate, seconds)
                else:
                    workdir = Path(tmp) / f"round-{r}"
                    workdir.mkdir()
                    latencies = dispatcher_round(workdir, receiver, url, args.rate, seconds)
                p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
                series.add(f"{side}_p50_ms", p50)
                series.add(f"{side}_p99_ms", p99)
                series.add(f"{side}_max_ms", max(latencies))
                series.add(f"{side}_samples", len(latencies))
                progress(
                    f"round {r + 1}/{rounds} {side}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                    f"max {max(latencies):.1f} ms ({len(latencies)} events)",
                )
    print()
    print_table(
        ["side", "events/s", "p50 ms", "p99 ms", "max ms"],
        [
            [label, args.rate, series.median(f"{side}_p50_ms"), series.median(f"{side}_p99_ms"),
             series.median(f"{side}_max_ms")]
            for side, label in (("dispatcher", "dispatch run (socket -> store -> HTTP)"),
                                ("baseline", "requests.Session straight to the receiver"))
        ],
    )  # fmt: skip
    p50, p99 = series.median("dispatcher_p50_ms"), series.median("dispatcher_p99_ms")
    targets = [
        Target("latency p50", p50, "ms", series.median("baseline_p50_ms"), "direct requests.Session",
               f"<= {TARGET_P50_MS:g} ms", p50 <= TARGET_P50_MS),
        Target("latency p99", p99, "ms", series.median("baseline_p99_ms"), "direct requests.Session",
               f"<= {TARGET_P99_MS:g} ms", p99 <= TARGET_P99_MS),
    ]  # fmt: skip
    print_targets(targets)
    write_result(
        "latency",
        args.out,
        args,
        {"rate_per_second": args.rate, "seconds": seconds, "series": series.as_json(), "targets": targets},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
