#!/usr/bin/env python3
"""Benchmark: healthy deliveries while half the webhooks point at an endpoint that never answers (SPEC 9).

    python bench/isolation.py --webhooks 20 --events 2000 --rounds 3

Every event matches every webhook. W webhooks: half point at nginx answering 204 (the Python receiver when
nginx is missing), half at a "blackhole": a socket on 127.0.0.1 that accepts connections and never reads or
answers, so each attempt there holds a worker until the webhook's ``config.timeout`` (5 s here) and is then
retried on the default schedule. ``--blackhole-ports`` spreads the dead half over that many endpoints (ports):
one dead partner by default, or several dead partners, each with its own per-endpoint limit.

- measured: a fresh ``dispatch run`` with all W webhooks; N events published with a pipelining client; the
  healthy rate = N x W/2 healthy deliveries / (last healthy delivery recorded - first byte published).
- baseline: the same run with only the healthy half configured.

When the healthy deliveries of a round do not all arrive within ``--timeout`` (starvation), the rate counted
is the healthy deliveries that did arrive divided by the timeout.

Target: healthy rate with the blackhole >= 0.9 x without it (medians of the rounds, interleaved).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from common import (
    Blackhole,
    Dispatcher,
    Rounds,
    StoreWatch,
    Target,
    add_receiver_option,
    event_line,
    fast_receiver,
    parser,
    print_table,
    print_targets,
    progress,
    publish_pipelined,
    webhook_yaml,
    write_atomic,
    write_result,
)

TARGET_RATIO = 0.9
BLACKHOLE_TIMEOUT_SECONDS = 5
HEALTHY = "bench-healthy-"


def write_config(directory: Path, healthy_urls: Sequence[str], dead_urls: Sequence[str]) -> None:
    directory.mkdir()
    for i, url in enumerate(healthy_urls):
        name = f"{HEALTHY}{i:03d}"
        write_atomic(directory / f"{name}.yaml", webhook_yaml(name, url, timeout_seconds=10, variant=4 * i))
    for i, url in enumerate(dead_urls):
        name = f"bench-blackhole-{i:03d}"
        text = webhook_yaml(name, url, timeout_seconds=BLACKHOLE_TIMEOUT_SECONDS, variant=4 * i)
        write_atomic(directory / f"{name}.yaml", text)


def healthy_rate(workdir: Path, lines: Sequence[bytes], healthy: int, timeout_seconds: float) -> float:
    """Healthy deliveries per second for the config already in ``workdir/webhooks.d``."""
    expected = len(lines) * healthy
    with Dispatcher(workdir, workdir / "webhooks.d") as dispatcher:
        result = publish_pipelined(dispatcher.socket_path, b"".join(lines), timeout_seconds)
        if result.accepted != len(lines):
            raise RuntimeError(f"{result.accepted} of {len(lines)} accepted: {result.first_rejection}")
        with StoreWatch(dispatcher.store_path) as store:
            complete = store.wait_delivered(expected, timeout_seconds)
            count, last = store.delivered(HEALTHY)
            counts = store.counts()
        progress(f"  {workdir.name}: acks in {result.last_ack_seconds:.2f}s, deliveries by status {counts}")
        if not complete:  # starved: the rate is what got through in the time allowed
            progress(f"  only {count} of {expected} healthy deliveries within {timeout_seconds:g}s")
            return count / timeout_seconds
        assert last is not None and count == expected, (count, expected)
        return expected / (float(last) - result.started)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__ or "", rounds=3)
    p.add_argument("--webhooks", type=int, help="webhooks, half of them dead (default 20; 4 with --quick)")
    p.add_argument("--events", type=int, help="events per round (default 2000; 100 with --quick)")
    p.add_argument("--blackhole-ports", type=int, default=1, help="endpoints the dead half is spread over")
    p.add_argument(
        "--timeout", type=float, default=180.0, help="seconds allowed for the healthy deliveries of a round"
    )
    add_receiver_option(p)
    args = p.parse_args(argv)
    webhooks = args.webhooks or (4 if args.quick else 20)
    n = args.events or (100 if args.quick else 2000)
    rounds = 1 if args.quick else args.rounds
    healthy, dead = webhooks - webhooks // 2, webhooks // 2
    series = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp, ExitStack() as stack:
        receiver = fast_receiver(args.receiver, Path(tmp))
        stack.enter_context(receiver)
        ports = max(1, min(args.blackhole_ports, dead or 1))
        holes = [stack.enter_context(Blackhole()) for _ in range(ports)]
        healthy_urls = [receiver.url(f"/hook/healthy-{i}") for i in range(healthy)]
        dead_urls = [holes[i % len(holes)].url(f"/hook/dead-{i}") for i in range(dead)]
        progress(
            f"receiver: {receiver.note}; {healthy} healthy + {dead} dead webhooks on {len(holes)} blackhole "
            f"endpoint(s) (timeout {BLACKHOLE_TIMEOUT_SECONDS}s); {n} events per round, {rounds} round(s)"
        )
        for r in range(rounds):
            lines = [event_line(i) for i in range(n)]
            for side, dead_side in (("without", ()), ("with", dead_urls)):
                workdir = Path(tmp) / f"round-{r}-{side}-blackhole"
                workdir.mkdir()
                write_config(workdir / "webhooks.d", healthy_urls, dead_side)
                series.add(f"{side}_per_second", healthy_rate(workdir, lines, healthy, args.timeout))
            progress(
                f"round {r + 1}/{rounds}: healthy {series.values['with_per_second'][-1]:,.0f}/s with the "
                f"blackhole, {series.values['without_per_second'][-1]:,.0f}/s without"
            )
        accepted = sum(h.accepted for h in holes)
        receiver_note = receiver.note

    with_rate, without_rate = series.median("with_per_second"), series.median("without_per_second")
    ratio = with_rate / without_rate
    print()
    print_table(
        ["webhooks", "events", "side", "median healthy deliveries/s"],
        [
            [webhooks, n, f"{healthy} healthy + {dead} never answering", with_rate],
            [healthy, n, f"{healthy} healthy only (baseline)", without_rate],
        ],
    )
    targets = [
        Target(
            what="isolation (healthy rate)",
            measured=with_rate,
            unit="deliveries/s",
            baseline=without_rate,
            baseline_what="healthy webhooks only",
            target=f">= {TARGET_RATIO:g}x baseline",
            met=ratio >= TARGET_RATIO,
            ratio=ratio,
        )
    ]
    print_targets(targets)
    write_result(
        "isolation",
        args.out,
        args,
        {
            "webhooks": webhooks,
            "healthy_webhooks": healthy,
            "blackhole_webhooks": dead,
            "blackhole_endpoints": len(holes),
            "blackhole_timeout_seconds": BLACKHOLE_TIMEOUT_SECONDS,
            "blackhole_connections_accepted": accepted,
            "events": n,
            "receiver_note": receiver_note,
            "series": series.as_json(),
            "ratio": round(ratio, 3),
            "targets": targets,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
