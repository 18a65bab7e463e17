#!/usr/bin/env python3
"""Benchmark: one file changed among 10,000 under ``dispatch run``, until the new table is active (SPEC 9).

    python bench/reload.py --files 10000 --rounds 5

Generates N active webhook files (127.0.0.1 targets where nothing listens; no event is published, so
nothing is delivered) and starts ``dispatch run --metrics`` with its watcher. Each round rewrites one file
atomically (a hidden temporary file renamed over it, as editors and git do) with a new timeout, then polls
``/metrics`` until ``config_last_reload_success_timestamp_seconds`` moves, and checks that ``/status`` reports
a new ``active_revision``. That gauge is set from the same clock reading as the swap of the new table, so
"write -> active" is its value minus the time the rename returned: exact whatever the polling interval. So
polling only detects the change, every 50 ms by default (``--poll-ms``): each scrape is served by the
process being measured, and scraping every 5 ms (or ``/status``, which lists all N webhooks) would slow the
reload it measures. The ``took_ms`` of each ``config.applied`` log line (load and swap alone) is reported
too, so the rest is the watcher's latency.

Reported: time from the write to the new table being active, minus the watcher's debounce (the default of
the ``ConfigWatcher`` that ``dispatcher.app`` uses), median of the rounds. Baseline for scale: a cold
``reconcile --check`` of the same tree (a whole process, full load). Target: <= 200 ms after the debounce.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import (
    Dispatcher,
    Rounds,
    Target,
    console_script,
    free_port,
    loopback_url,
    parser,
    print_table,
    print_targets,
    progress,
    webhook_yaml,
    write_atomic,
    write_result,
)

import dispatcher.app

TARGET_MS = 200.0
RELOAD_METRIC = "config_last_reload_success_timestamp_seconds"
_EVENT_TYPES = (
    "package.created",
    ["package.created", "package.status.*"],
    "package.status.shipped",
    "shipment.**",
    ["transfer.status.in_transit", "transfer.status.created"],
    "stock_location.updated",
    ["package.status.*", "shipment.created"],
)


def debounce_seconds() -> float:
    """The default debounce of the watcher that ``dispatch run`` uses (read from the code, not copied)."""
    watcher = vars(dispatcher.app)["ConfigWatcher"]
    return float(inspect.signature(watcher.__init__).parameters["debounce_seconds"].default)


def hook_name(i: int) -> str:
    return f"bench-hook-{i:05d}"


def generate(directory: Path, count: int, port: int) -> None:
    directory.mkdir(parents=True)
    for i in range(count):
        name = hook_name(i)
        url = loopback_url(port, f"/hooks/{name}")
        text = webhook_yaml(name, url, _EVENT_TYPES[i % len(_EVENT_TYPES)], variant=i)
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")


def reconcile_seconds(directory: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [console_script("reconcile"), "--check", str(directory)], capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"reconcile --check rejected the generated tree:\n{done.stdout[-2000:]}")
    return took


def one_reload(
    dispatcher: Dispatcher, path: Path, text: str, poll_seconds: float, timeout_seconds: float
) -> tuple[float, float]:
    """Seconds from the write to the swap (from the gauge), and to when polling first saw it."""
    before = dispatcher.metric(RELOAD_METRIC) or 0.0
    write_atomic(path, text)
    written = time.time()
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = dispatcher.metric(RELOAD_METRIC) or 0.0
        if value > before and value >= written - 1.0:
            return value - written, time.time() - written
        time.sleep(poll_seconds)
    raise RuntimeError(f"no reload within {timeout_seconds:g}s:\n{dispatcher.log_tail()}")


def reload_took_ms(log_text: str) -> list[float]:
    """``took_ms`` of every ``config.applied`` line of the dispatcher's log: the load and swap alone."""
    return [float(m.group(1)) for m in re.finditer(r"config\.applied\b.*?\btook_ms=([\d.]+)", log_text)]


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__ or "", rounds=5)
    p.add_argument("--files", type=int, help="webhook files (default 10000; 200 with --quick)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one reload may take at most")
    p.add_argument(
        "--poll-ms",
        type=float,
        default=50.0,
        help="how often /metrics is polled (detection only; default 50)",
    )
    args = p.parse_args(argv)
    files = args.files or (200 if args.quick else 10_000)
    rounds = 2 if args.quick else args.rounds
    debounce = debounce_seconds()
    series = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        config = Path(tmp) / "webhooks.d"
        port = free_port()  # nothing listens there, and nothing is published
        generate(config, files, port)
        progress(f"{files} webhook files; watcher debounce {debounce * 1000:g} ms; {rounds} round(s)")
        for _ in range(rounds):
            series.add("reconcile_check_ms", reconcile_seconds(config) * 1000)
        with Dispatcher(Path(tmp), config, metrics=True, watch=True) as dispatcher:
            progress(f"dispatch run ready in {dispatcher.ready_seconds:.1f}s")
            time.sleep(1.0)  # let start-up settle (watcher armed, first scrapes done)
            target = config / f"{hook_name(files // 2)}.yaml"
            for r in range(rounds):
                revision = dispatcher.status()["active_revision"]
                time.sleep(0.5)
                text = webhook_yaml(
                    hook_name(files // 2), loopback_url(port, "/x"), "package.created", timeout_seconds=20 + r
                )
                active, seen = one_reload(dispatcher, target, text, args.poll_ms / 1000, args.timeout)
                new_revision = dispatcher.status()["active_revision"]
                if new_revision == revision:
                    raise RuntimeError("the reload did not change active_revision")
                series.add("after_debounce_ms", (active - debounce) * 1000)
                series.add("write_to_active_ms", active * 1000)
                series.add("write_to_seen_by_poll_ms", seen * 1000)
                progress(
                    f"round {r + 1}/{rounds}: active {active * 1000:.0f} ms after the write "
                    f"({(active - debounce) * 1000:.0f} ms after the debounce)"
                )
            ready_seconds = dispatcher.ready_seconds
            for took in reload_took_ms(dispatcher.log_tail(1 << 20)):
                series.add("reload_itself_ms", took)

    measured = series.median("after_debounce_ms")
    print()
    print_table(
        ["files", "what", "median ms"],
        [
            [files, "write -> new table active", series.median("write_to_active_ms")],
            [files, "  of which debounce", debounce * 1000],
            [files, "  after the debounce", measured],
            [files, "    of which load + swap (took_ms in the log)", series.median("reload_itself_ms")],
            [files, "cold `reconcile --check` (baseline, scale)", series.median("reconcile_check_ms")],
        ],
    )
    targets = [
        Target(
            what="reload (after debounce)",
            measured=measured,
            unit="ms",
            baseline=series.median("reconcile_check_ms"),
            baseline_what="cold reconcile --check",
            target=f"<= {TARGET_MS:g} ms",
            met=measured <= TARGET_MS,
        )
    ]
    print_targets(targets)
    write_result(
        "reload",
        args.out,
        args,
        {
            "files": files,
            "debounce_ms": debounce * 1000,
            "dispatcher_ready_seconds": round(ready_seconds, 3),
            "series": series.as_json(),
            "targets": targets,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
