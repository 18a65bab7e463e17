#!/usr/bin/env python3
"""Benchmark: dispatcher memory with 10,000 webhooks and 1,000,000 pending deliveries (SPEC section 9).

    python bench/memory.py --webhooks 10000 --deliveries 1000000 --rounds 3

Setup. W active webhook files, all pointing at one "blackhole" endpoint on 127.0.0.1 (accepts connections,
never answers; ``config.timeout`` 5 s). The store is filled before the dispatcher starts, through the
dispatcher's own store API (``SQLiteStore.enqueue``, what ingest calls): D/10 events, each routed to 10 of
the webhooks, so D pending deliveries, all due now. That is a dispatcher restarted with a backlog, and much
faster to build than publishing D deliveries through the socket.

Measured. ``dispatch run`` starts on that store and works as it would: the scheduler leases due deliveries
into its in-memory endpoint queues (bounded by the engine's settings), attempts time out on the blackhole,
failures are rescheduled, so the queue stays at about D open deliveries throughout. After a settle time the
memory of the dispatcher's processes (the main one and any child it runs deliveries in) is sampled from /proc
every 0.5 s, and the maximum sample counts. The figure held against the target is the PSS summed over those
processes (shared pages split among the processes sharing them: the memory they take together, counted
once); the plain sum of VmRSS, the main process's VmRSS and VmHWM (its peak since start, start-up included)
and the CPU the processes used meanwhile are reported too.

Baseline: the same dispatcher and the same W webhooks with an empty store. Target: <= 100 MB.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from common import (
    STORE_FILE,
    Blackhole,
    Dispatcher,
    Rounds,
    StoreWatch,
    Target,
    event_line,
    parser,
    print_table,
    print_targets,
    progress,
    webhook_yaml,
    write_result,
)

from dispatcher.protocol import ParsedEvent, parse_line
from dispatcher.store.base import NewEvent
from dispatcher.store.sqlite import SQLiteStore

TARGET_MB = 100.0
PER_EVENT = 10
TIMEOUT_SECONDS = 5
BATCH_EVENTS = 2000


def hook_name(i: int) -> str:
    return f"bench-hook-{i:05d}"


def generate(directory: Path, count: int, url: str) -> None:
    directory.mkdir()
    for i in range(count):
        name = hook_name(i)
        text = webhook_yaml(name, url, "package.created", timeout_seconds=TIMEOUT_SECONDS, variant=i)
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")


def fill_store(state: Path, webhooks: int, deliveries: int) -> float:
    """Enqueue ``deliveries`` pending deliveries (``PER_EVENT`` per event); returns the seconds it took."""
    state.mkdir(mode=0o700)
    per_event = min(PER_EVENT, webhooks)
    template = parse_line(event_line(0).rstrip(b"\n"), 1)
    assert isinstance(template, ParsedEvent)
    start = time.perf_counter()
    with SQLiteStore(state / STORE_FILE) as store:
        made = 0
        i = 0
        while made < deliveries:
            batch = []
            for _ in range(BATCH_EVENTS):
                k = min(per_event, deliveries - made)
                if k <= 0:
                    break
                names = tuple(hook_name((i * per_event + j) % webhooks) for j in range(k))
                batch.append(NewEvent(uuid.uuid4().hex, template.type, template.body, names))
                made += k
                i += 1
            store.enqueue(batch, time.time())
    return time.perf_counter() - start


def measure(
    workdir: Path, config: Path, name: str, settle_seconds: float, sample_seconds: float
) -> dict[str, float]:
    """Start a dispatcher on ``workdir/<name>-state``, let it settle, sample its memory; MB and CPU share."""
    with Dispatcher(workdir, config, name=name) as dispatcher:
        time.sleep(settle_seconds)
        cpu_before, wall_before = dispatcher.cpu_seconds(), time.monotonic()
        samples: list[dict[str, float]] = []
        end = time.monotonic() + sample_seconds
        while time.monotonic() < end:
            samples.append(dispatcher.memory_mb())
            time.sleep(0.5)
        cpu = (dispatcher.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        with StoreWatch(dispatcher.store_path) as store:
            counts = store.counts()
        if dispatcher.proc.poll() is not None:
            raise RuntimeError(f"dispatch exited:\n{dispatcher.log_tail()}")
        ready = dispatcher.ready_seconds
    open_deliveries = counts.get("pending", 0) + counts.get("failed", 0)
    peak = {key: max(sample[key] for sample in samples) for key in samples[0]}
    return {
        "pss_mb": peak["tree_pss_mb"],
        "tree_rss_mb": peak["tree_rss_mb"],
        "main_rss_mb": peak["main_rss_mb"],
        "main_hwm_mb": samples[-1]["main_hwm_mb"],
        "processes": peak["processes"],
        "cpu_share": cpu,
        "ready_seconds": ready,
        "open_deliveries": float(open_deliveries),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__ or "", rounds=3)
    p.add_argument("--webhooks", type=int, help="webhook files (default 10000; 200 with --quick)")
    p.add_argument("--deliveries", type=int, help="pending deliveries (default 1000000; 10000 with --quick)")
    p.add_argument(
        "--settle", type=float, help="seconds after start-up before sampling (default 15; 2 quick)"
    )
    p.add_argument("--sample", type=float, help="seconds of sampling (default 10; 2 with --quick)")
    args = p.parse_args(argv)
    webhooks = args.webhooks or (200 if args.quick else 10_000)
    deliveries = args.deliveries or (10_000 if args.quick else 1_000_000)
    settle = args.settle if args.settle is not None else (2.0 if args.quick else 15.0)
    sample = args.sample if args.sample is not None else (2.0 if args.quick else 10.0)
    rounds = 1 if args.quick else args.rounds
    series = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, Blackhole() as hole:
        workdir = Path(tmp)
        config = workdir / "webhooks.d"
        generate(config, webhooks, hole.url("/hook"))
        progress(
            f"{webhooks} webhooks -> blackhole (timeout {TIMEOUT_SECONDS}s); filling {deliveries} deliveries"
        )
        fill_seconds = fill_store(workdir / "full-state", webhooks, deliveries)
        progress(f"store filled in {fill_seconds:.1f}s; settle {settle:g}s, sample {sample:g}s per round")
        for r in range(rounds):
            for side, name in (("baseline", f"empty-{r}"), ("measured", "full")):
                figures = measure(workdir, config, name, settle, sample)
                for key, value in figures.items():
                    series.add(f"{side}_{key}", value)
                progress(
                    f"round {r + 1}/{rounds} {side}: {figures['pss_mb']:.1f} MB over "
                    f"{figures['processes']:.0f} process(es) (main RSS {figures['main_rss_mb']:.1f} MB, "
                    f"HWM {figures['main_hwm_mb']:.1f} MB), CPU {figures['cpu_share']:.0%}, "
                    f"{figures['open_deliveries']:,.0f} open deliveries"
                )
    print()
    print_table(
        ["webhooks", "pending", "PSS MB (all)", "RSS MB (all)", "RSS MB (main)", "HWM MB (main)", "CPU",
         "ready s"],
        [
            [webhooks, series.median(f"{side}_open_deliveries"), series.median(f"{side}_pss_mb"),
             series.median(f"{side}_tree_rss_mb"), series.median(f"{side}_main_rss_mb"),
             series.median(f"{side}_main_hwm_mb"), f"{series.median(f'{side}_cpu_share'):.0%}",
             series.median(f"{side}_ready_seconds")]
            for side in ("measured", "baseline")
        ],
    )  # fmt: skip
    rss, base = series.median("measured_pss_mb"), series.median("baseline_pss_mb")
    targets = [
        Target(
            what="memory (PSS, all processes)",
            measured=rss,
            unit="MB",
            baseline=base,
            baseline_what="empty store",
            target=f"<= {TARGET_MB:g} MB",
            met=rss <= TARGET_MB,
        )
    ]
    print_targets(targets)
    for key, label in (
        ("tree_rss_mb", "the plain sum of VmRSS"),
        ("main_hwm_mb", "the main process's VmHWM"),
    ):
        if series.median(f"measured_{key}") > TARGET_MB:
            print(f"note: {label} is {series.median(f'measured_{key}'):.1f} MB, above the target")
    write_result(
        "memory",
        args.out,
        args,
        {
            "webhooks": webhooks,
            "deliveries": deliveries,
            "blackhole_timeout_seconds": TIMEOUT_SECONDS,
            "store_fill_seconds": round(fill_seconds, 2),
            "settle_seconds": settle,
            "sample_seconds": sample,
            "series": series.as_json(),
            "targets": targets,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
