#!/usr/bin/env python3
"""Benchmark: latency hidden (issue #13, acceptance 2). The same dispatcher on three receiver shapes, one run.

    python bench/slow_receivers.py --rounds 3
    python bench/slow_receivers.py --rounds 3 --workers 64 256 512   # the concurrency model, measured

Shapes (the receivers run for the whole run, on 127.0.0.1):

- fast: one endpoint answering 204 at once (nginx when installed; else bench/receiver.py): the cost per
  delivery, and the bound of the slow shapes when the CPU is what limits them;
- python-20: 20 endpoints of the Python receiver below answering at once: a reference, not a bound (what the
  dispatcher delivers when the receiver's own CPU, which shares the two cores, is that of the slow shapes);
- slow-20: 20 endpoints answering 204 after 50 ms (nginx with Debian's echo module, ``echo_sleep``, one
  port per endpoint; ``--delayed python``, or without the module, bench/delayed_receiver.py: one asyncio
  process);
- slow-1000: 1,000 endpoints answering after 200 ms (a second such receiver on 1,000 ports; the endpoint key
  is host:port, so each port is an endpoint with its own limit);
- instant-1000: the same 1,000 endpoints' twin answering at once (a third such receiver, no ``echo_sleep``):
  the same webhooks, fan-out (every event to all 1,000), signatures and connections as slow-1000, without
  the wait. It is slow-1000's CPU bound: what those deliveries cost when nothing is waited for.

For every ``--workers`` value (default: the dispatcher's own default) and round, each shape gets a fresh
``dispatch run`` with one signed webhook per endpoint and every event matching every webhook; events go in
through its socket (a pipelining client). ``--warmup-events`` (2) go first and are delivered before timing
starts, so every endpoint has proven itself (an endpoint starts with one slot) and has connections open in
the delivery processes: real receivers are a steady state. Time: first byte of the measured events published
to the last delivery recorded as delivered in the store (a side not done within ``--side-seconds`` is its
deliveries over that time). Also reported: the CPU the dispatcher's processes used meanwhile, per delivery.

Bounds, each slow shape against the lowest of (reported with which one it is):

- CPU: the same dispatcher's throughput in the same round set (median) on the shape's instant twin where
  there is one (instant-1000 for slow-1000), else on the fast endpoint (slow-20: the issue's own bound).
  slow-1000 against the fast endpoint is printed too;
- configured limits: attempts in flight at most min(workers, endpoints x per_endpoint), each taking the
  delay at least, so min(workers, endpoints x per_endpoint) / delay deliveries per second.

Targets: both slow shapes >= 0.9 x their bound (medians of the rounds). The receivers share the machine's
two cores with the dispatcher: nginx costs a few tens of microseconds per request, the Python delayed
receiver several times that, so with the Python one the CPU bound (measured against nginx) is stricter than
the shapes' own.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery_peer import Outcome, poll
from common import (
    Dispatcher,
    PythonDelayedReceiver,
    Rounds,
    StoreWatch,
    Target,
    add_delayed_option,
    add_receiver_option,
    delayed_receiver,
    event_line,
    fast_receiver,
    loopback_url,
    parser,
    print_table,
    print_targets,
    progress,
    publish_pipelined,
    webhook_yaml,
    write_atomic,
    write_result,
)

from dispatcher.settings import EngineSettings

TARGET = 0.9


@dataclass(frozen=True)
class Shape:
    """A receiver shape: its webhooks' URLs and the delay of every answer."""

    name: str
    urls: tuple[str, ...]
    delay_seconds: float
    deliveries: int

    @property
    def events(self) -> int:
        return max(1, self.deliveries // len(self.urls))


@dataclass(frozen=True)
class Side:
    """One dispatcher's figures on one shape: deliveries, time, and its processes' CPU per delivery."""

    outcome: Outcome
    cpu_us_per_delivery: float


def run_dispatcher(
    workdir: Path, shape: Shape, workers: int | None, side_seconds: float, warmup_events: int
) -> Side:
    """A fresh dispatcher with the shape's webhooks. ``warmup_events`` first (every endpoint proven and its
    connections open in every delivery process: the steady state, not the first minute), then every event
    published and every delivery waited for."""
    config = workdir / "webhooks.d"
    config.mkdir(parents=True)
    for i, url in enumerate(shape.urls):
        write_atomic(config / f"hook-{i:04d}.yaml", webhook_yaml(f"hook-{i:04d}", url, timeout_seconds=10))
    warm = b"".join(event_line(i) for i in range(warmup_events))
    lines = b"".join(event_line(warmup_events + i) for i in range(shape.events))
    warm_n = warmup_events * len(shape.urls)
    n = shape.events * len(shape.urls)
    extra = [] if workers is None else ["--workers", str(workers)]
    with (
        Dispatcher(workdir, config, extra_args=extra) as dispatcher,
        StoreWatch(dispatcher.store_path) as store,
    ):
        if warm_n:
            publish_pipelined(dispatcher.socket_path, warm, side_seconds + 60)
            if not store.wait_delivered(warm_n, side_seconds + 60):
                raise RuntimeError(f"warm-up not delivered: {store.counts()}")
        cpu_before = dispatcher.cpu_seconds()
        result = publish_pipelined(dispatcher.socket_path, lines, side_seconds + 60)
        if result.accepted != shape.events:
            raise RuntimeError(
                f"{result.accepted} of {shape.events} events accepted: {result.first_rejection}"
            )
        started = time.perf_counter() - (time.time() - result.started)
        outcome = poll(lambda: store.delivered_count() - warm_n, n, started, side_seconds)
        count, last = store.delivered()
        cpu = dispatcher.cpu_seconds() - cpu_before
        if count - warm_n >= n and last is not None:  # the time the last one was recorded, not when we looked
            outcome = Outcome(count - warm_n, float(last) - result.started)
        return Side(outcome, cpu * 1e6 / max(1, outcome.delivered))


def bound(shape: Shape, workers: int, per_endpoint: int, cpu_rate: float, cpu_what: str) -> tuple[float, str]:
    """The lower of the CPU bound (``cpu_rate``: the instant twin's or the fast figure) and the configured
    limits' (in flight / delay)."""
    in_flight = min(workers, len(shape.urls) * per_endpoint)
    limits = in_flight / shape.delay_seconds
    if limits < cpu_rate:
        return limits, f"limits: {in_flight} in flight / {shape.delay_seconds * 1000:g} ms"
    return cpu_rate, f"CPU: {cpu_what}"


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__ or "", rounds=3)
    p.add_argument("--workers", type=int, nargs="+", help="dispatch run --workers values (default its own)")
    p.add_argument("--deliveries", type=int, help="deliveries per shape (default 6000 and 12000; quick 200)")
    p.add_argument("--many", type=int, default=1000, help="endpoints of the slow-1000 shape (default 1000)")
    p.add_argument("--warmup-events", type=int, default=2, help="events delivered before timing (default 2)")
    p.add_argument("--side-seconds", type=float, help="at most this long per side (default 60; quick 20)")
    add_receiver_option(p)
    add_delayed_option(p)
    args = p.parse_args(argv)
    defaults = EngineSettings()
    workers_values: list[int | None] = list(args.workers) if args.workers else [None]
    rounds = 1 if args.quick else args.rounds
    side_seconds = args.side_seconds or (20.0 if args.quick else 60.0)
    few, many = (4, 40) if args.quick else (20, args.many)
    n = args.deliveries or (200 if args.quick else 6000)
    series = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        fast = stack.enter_context(fast_receiver(args.receiver, workdir))
        slow_few = stack.enter_context(delayed_receiver(args.delayed, workdir / "slow-few", few, 50.0))
        slow_many = stack.enter_context(delayed_receiver(args.delayed, workdir / "slow-many", many, 200.0))
        instant_many = stack.enter_context(
            delayed_receiver(args.delayed, workdir / "instant-many", many, 0.0)
        )
        zero_few = stack.enter_context(PythonDelayedReceiver(few, 0.0))
        shapes = [
            Shape("fast", (fast.url("/hook/fast"),), 0.0, n),
            Shape(
                f"python-{few}",
                tuple(loopback_url(port, f"/hook/{i}") for i, port in enumerate(zero_few.ports)),
                0.0,
                n,
            ),
            Shape(
                f"slow-{few}",
                tuple(loopback_url(port, f"/hook/{i}") for i, port in enumerate(slow_few.ports)),
                0.05,
                n,
            ),
            Shape(
                f"slow-{many}",
                tuple(loopback_url(port, f"/hook/{i}") for i, port in enumerate(slow_many.ports)),
                0.2,
                n if args.deliveries or args.quick else 2 * n,
            ),
            Shape(
                f"instant-{many}",
                tuple(loopback_url(port, f"/hook/{i}") for i, port in enumerate(instant_many.ports)),
                0.0,
                n if args.deliveries or args.quick else 2 * n,
            ),
        ]
        twins = {f"slow-{many}": f"instant-{many}"}  # a slow shape's CPU bound: its twin answering at once
        progress(
            f"fast receiver: {fast.note}; {rounds} round(s); workers {workers_values} "
            f"(None: the default, {defaults.workers}); per endpoint {defaults.per_endpoint}; "
            f"delayed receivers: {slow_few.note}"
        )
        for r in range(rounds):
            for workers in workers_values:
                figures = []
                for shape in shapes:
                    side = workdir / f"round-{r}-{workers}-{shape.name}"
                    measured = run_dispatcher(side, shape, workers, side_seconds, args.warmup_events)
                    outcome = measured.outcome
                    series.add(f"{workers or defaults.workers}:{shape.name}", outcome.rate)
                    series.add(
                        f"{workers or defaults.workers}:{shape.name}:cpu", measured.cpu_us_per_delivery
                    )
                    n_shape = shape.events * len(shape.urls)
                    figures.append(
                        f"{shape.name} {outcome.rate:,.0f}/s ({outcome.delivered}/{n_shape}, "
                        f"{measured.cpu_us_per_delivery:,.0f} us CPU each)"
                    )
                label = workers or defaults.workers
                progress(f"round {r + 1}/{rounds} workers {label}: " + ", ".join(figures))

    rows: list[list[object]] = []
    targets: list[Target] = []
    for workers in workers_values:
        w = workers or defaults.workers
        fast_rate = series.median(f"{w}:fast")
        for shape in shapes:
            values = series.values[f"{w}:{shape.name}"]
            med = series.median(f"{w}:{shape.name}")
            spread = f"{min(values):,.0f}-{max(values):,.0f}"
            cpu = series.median(f"{w}:{shape.name}:cpu")
            if not shape.delay_seconds:  # fast, instant and the Python receiver at 0 ms: references, bounds
                rows.append([w, shape.name, med, spread, cpu, "-", "-", "-"])
                continue
            twin = twins.get(shape.name)
            if twin is not None:
                cpu_rate, cpu_what = series.median(f"{w}:{twin}"), f"{twin} figure"
                rows.append(
                    [w, f"{shape.name} vs fast", med, spread, cpu, fast_rate, "fast-endpoint figure",
                     f"{med / fast_rate:.2f}x"]
                )  # fmt: skip
            else:
                cpu_rate, cpu_what = fast_rate, "fast-endpoint figure"
            limit, why = bound(shape, w, defaults.per_endpoint, cpu_rate, cpu_what)
            ratio = med / limit if limit else 0.0
            rows.append([w, shape.name, med, spread, cpu, limit, why, f"{ratio:.2f}x"])
            targets.append(
                Target(
                    what=f"{shape.name} x {shape.delay_seconds * 1000:g} ms, workers {w}",
                    measured=med,
                    unit="deliveries/s",
                    baseline=limit,
                    baseline_what=why,
                    target=f">= {TARGET:g}x baseline",
                    met=ratio >= TARGET,
                    ratio=ratio,
                )
            )
    print()
    print_table(
        [
            "workers",
            "shape",
            "median deliveries/s",
            "spread (min-max)",
            "CPU us/delivery",
            "bound",
            "bound is",
            "ratio",
        ],
        rows,
    )
    print_targets(targets)
    doc: dict[str, Any] = {
        "workers": [w or defaults.workers for w in workers_values],
        "per_endpoint": defaults.per_endpoint,
        "shapes": [{"name": s.name, "endpoints": len(s.urls), "delay_s": s.delay_seconds} for s in shapes],
        "fast_receiver": fast.kind,
        "series": series.as_json(),
        "targets": targets,
    }
    write_result("slow_receivers", args.out, args, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
