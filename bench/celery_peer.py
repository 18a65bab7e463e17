#!/usr/bin/env python3
"""Benchmark: the dispatcher against the OMS's delivery path today (Celery 5 + Redis + requests) and a plain
``requests`` loop, in one run, on two receiver shapes (issue #13).

    python bench/celery_peer.py --rounds 3

Shapes (the receivers run for the whole run, on 127.0.0.1):

- fast: one endpoint answering 204 at once (nginx, one worker, when installed; else bench/receiver.py);
- slow: ``--slow-endpoints`` (20) endpoints answering 204 after ``--delay-ms`` (50 ms): the shape of real
  receivers, served by nginx with Debian's echo module (``echo_sleep``) when installed, else (or with
  ``--delayed python``) by bench/delayed_receiver.py (one asyncio process); one port per endpoint.

Sides, each given the same N deliveries per shape and round (the sides of a round run one after the other,
rounds repeat the whole set, so machine noise hits every side alike):

- dispatcher: a fresh ``dispatch run`` (default settings) with one signed webhook per endpoint, every event
  matching every webhook; events published on its socket by a pipelining client. Time: first byte published
  to the last delivery recorded as delivered in the store.
- celery prefork x2 / celery threads x64: a Celery 5 worker (``--pool prefork --concurrency 2``, the
  default on two cores; ``--pool threads --concurrency 64``) on a Redis broker (Debian's ``redis-server``,
  started by this script on a free loopback port, no persistence), running bench/celery_peer_tasks.py:
  dj-whisperer's task (one per event and webhook, ``acks_late``, retry countdown, a Redis lock per task,
  the POST with ``requests``; that file says what is kept, and what is changed or left out in Celery's
  favour: a kept-alive session per worker thread, no PostgreSQL row per attempt). The worker is started
  and ready (answers a ping) before the clock starts; this process then enqueues one task per delivery
  with ``apply_async`` as the OMS does. Time: first task enqueued to the last one delivered (a Redis
  counter the task increments after a 2xx, polled every 20 ms).
- requests loop (fast shape only): one thread, one ``requests.Session``, POSTing the same bodies with the
  same headers one after the other (on the slow shape it is bounded by the delay: 1 / 50 ms = 20/s).

A side that has not finished within ``--side-seconds`` is stopped there and its rate is what it delivered
by then over that time (a steady-state figure: the slow shape takes Celery prefork minutes otherwise).

Targets (acceptance 4 of issue #13): the dispatcher >= 2.5 x Celery prefork and >= 3 x Celery threads x64,
each on the shape where that pool is at its best (its higher median), same run.

Celery and the Redis client come from the project's ``bench`` extra (``pip install -e '.[bench]'``), Redis
from Debian (``apt-get install redis-server``); ``.ci/run`` installs both. Without them the Celery sides are
skipped with a note on a developer's machine, and the script fails in CI (CI=true), like tests/requires.py.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

import requests
from common import (
    BENCH,
    SECRET_VALUE,
    Dispatcher,
    Nginx,
    PythonReceiver,
    Rounds,
    StoreWatch,
    Target,
    add_delayed_option,
    add_receiver_option,
    delayed_receiver,
    event_line,
    fast_receiver,
    free_port,
    loopback_url,
    parser,
    print_table,
    print_targets,
    progress,
    publish_pipelined,
    wait_port,
    webhook_yaml,
    write_atomic,
    write_result,
)

from dispatcher.protocol import ParsedEvent, parse_line
from dispatcher.signing import delivery_headers

TARGET_PREFORK = 2.5
TARGET_THREADS = 3.0
EXTRA_HEADERS = {"X-Source": "oms", "X-Tenant": "tenant-0"}  # what webhook_yaml(variant=0) configures
IN_CI = os.environ.get("CI") == "true"
POOLS: dict[str, tuple[str, int]] = {"celery-prefork": ("prefork", 2), "celery-threads": ("threads", 64)}
SIDE_LABELS = {
    "dispatcher": "dispatch run",
    "celery-prefork": "Celery prefork x2",
    "celery-threads": "Celery threads x64",
    "loop": "requests loop, 1 thread",
}


@dataclass(frozen=True)
class Delivery:
    """One (event, webhook) delivery as the Celery task and the loop send it."""

    url: str
    event_type: str
    body: str


@dataclass(frozen=True)
class Shape:
    """A receiver shape: the webhooks (name, url) every event goes to."""

    name: str
    hooks: tuple[tuple[str, str], ...]

    def deliveries(self, lines: Sequence[bytes]) -> list[Delivery]:
        out = []
        for i, line in enumerate(lines):
            parsed = parse_line(line.rstrip(b"\n"), i + 1)
            assert isinstance(parsed, ParsedEvent)
            out.extend(Delivery(url, parsed.type, parsed.body.decode()) for _, url in self.hooks)
        return out


@dataclass(frozen=True)
class Outcome:
    delivered: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


def child_env(**extra: str) -> dict[str, str]:
    """The environment for the processes started here: no proxy settings (everything is on loopback)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return {**env, **extra}


class _Child:
    """A process started here in its own session, stopped (its whole process group) by ``close()``."""

    proc: subprocess.Popen[bytes]

    def close(self, timeout_seconds: float = 10.0) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout_seconds)
        with suppress(ProcessLookupError, PermissionError):  # prefork children left behind
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RedisServer(_Child):
    """Debian's ``redis-server`` on a free 127.0.0.1 port: no persistence, no other interface."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--protected-mode", "yes", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=child_env(),
        )  # fmt: skip
        try:
            wait_port(self.port, 10.0, self.proc)
        except BaseException:
            self.close()
            raise


class CeleryWorker(_Child):
    """``celery -A celery_peer_tasks worker`` with one pool, started and answering a ping."""

    def __init__(self, tasks: ModuleType, broker_url: str, pool: str, concurrency: int, log: Path) -> None:
        self.hostname = f"peer-{pool}-{os.getpid()}@bench"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_peer_tasks", "worker", "--pool", pool,
             "--concurrency", str(concurrency), "--loglevel", "WARNING", "--hostname", self.hostname],
            cwd=BENCH, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, start_new_session=True,
            env=child_env(PEER_BROKER_URL=broker_url, PEER_SECRET=SECRET_VALUE, PYTHONPATH=str(BENCH)),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60.0
            while not tasks.app.control.ping(destination=[self.hostname], timeout=0.5):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"celery worker ({pool}) not ready:\n{log.read_text()[-2000:]}")
        except BaseException:
            self.close()
            raise

    def close(self, timeout_seconds: float = 10.0) -> None:
        super().close(timeout_seconds)
        self._log.close()


def celery_missing() -> str | None:
    """Why the Celery sides cannot run here, or None."""
    for module in ("celery", "redis"):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"python package {module!r} missing (pip install -e '.[bench]')"
    if redis_binary() is None:
        return "redis-server missing (apt-get install redis-server)"
    return None


def redis_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", 1) else None
    )


def poll(count: Callable[[], int], n: int, started: float, side_seconds: float) -> Outcome:
    """Wait until ``count()`` reaches n or the side's time is up; what was delivered in how long."""
    deadline = started + side_seconds
    while True:
        done = count()
        now = time.perf_counter()
        if done >= n or now >= deadline:
            return Outcome(done, now - started)
        time.sleep(0.02)


def run_loop(work: Sequence[Delivery], side_seconds: float) -> Outcome:
    """One thread, one Session, every delivery with its delivery headers, one after the other."""
    now = int(time.time())
    prepared = []
    for i, d in enumerate(work):
        body = d.body.encode()
        headers = delivery_headers(
            event_type=d.event_type, msg_id=f"{i:032x}", timestamp=now, body=body, secret=SECRET_VALUE
        )
        prepared.append((d.url, body, {**headers, **EXTRA_HEADERS}))
    with requests.Session() as session:
        session.trust_env = False
        start = time.perf_counter()
        deadline = start + side_seconds
        done = 0
        for url, body, headers in prepared:
            response = session.post(url, data=body, headers=headers, timeout=10)
            if not 200 <= response.status_code < 300:
                raise RuntimeError(f"loop: receiver answered {response.status_code}")
            done += 1
            if time.perf_counter() > deadline:
                break
        return Outcome(done, time.perf_counter() - start)


def run_dispatcher(workdir: Path, shape: Shape, lines: Sequence[bytes], side_seconds: float) -> Outcome:
    """A fresh dispatcher with the shape's webhooks; every event published, every delivery waited for."""
    config = workdir / "webhooks.d"
    config.mkdir(parents=True)
    for name, url in shape.hooks:
        write_atomic(config / f"{name}.yaml", webhook_yaml(name, url, timeout_seconds=10))
    n = len(lines) * len(shape.hooks)
    with Dispatcher(workdir, config) as dispatcher:
        result = publish_pipelined(dispatcher.socket_path, b"".join(lines), side_seconds + 60)
        if result.accepted != len(lines):
            raise RuntimeError(f"{result.accepted} of {len(lines)} events accepted: {result.first_rejection}")
        with StoreWatch(dispatcher.store_path) as store:
            started = time.perf_counter() - (time.time() - result.started)
            outcome = poll(store.delivered_count, n, started, side_seconds)
            count, last = store.delivered()
        if count >= n and last is not None:  # the time the last one was recorded, not when we looked
            return Outcome(count, float(last) - result.started)
        return outcome


def run_celery(
    tasks: ModuleType,
    broker_url: str,
    pool: str,
    workdir: Path,
    work: Sequence[Delivery],
    side_seconds: float,
) -> Outcome:
    """A ready worker with this pool; one task enqueued per delivery; the delivered counter waited for."""
    cache = tasks._cache()
    cache.flushdb()
    with CeleryWorker(tasks, broker_url, *POOLS[pool], workdir / f"{pool}.log"):
        start = time.perf_counter()
        with tasks.app.producer_or_acquire() as producer:
            for d in work:
                tasks.deliver.apply_async((d.url, d.event_type, d.body, EXTRA_HEADERS), producer=producer)
        outcome = poll(lambda: int(cache.get(tasks.DONE_KEY) or 0), len(work), start, side_seconds)
        cache.flushdb()  # what is left undelivered is dropped before the worker stops
    return outcome


def ratio_target(what: str, series: Rounds, pool: str, shapes: Sequence[str], target: float) -> Target:
    """The dispatcher against one Celery pool, on the shape where that pool is at its best."""
    best = max(shapes, key=lambda s: series.median(f"{s}:{pool}"))
    ours, theirs = series.median(f"{best}:dispatcher"), series.median(f"{best}:{pool}")
    ratio = ours / theirs if theirs else float("inf")
    return Target(
        what=f"{what} ({best} shape)",
        measured=ours,
        unit="deliveries/s",
        baseline=theirs,
        baseline_what=SIDE_LABELS[pool],
        target=f">= {target:g}x baseline",
        met=ratio >= target,
        ratio=ratio,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__ or "", rounds=3)
    p.add_argument("--deliveries", type=int, help="deliveries per side and shape (default 6000; 200 quick)")
    p.add_argument("--slow-endpoints", type=int, default=20, help="endpoints of the slow shape (default 20)")
    p.add_argument("--delay-ms", type=float, default=50.0, help="the slow endpoints' delay (default 50)")
    p.add_argument("--side-seconds", type=float, help="at most this long per side (default 30; 20 quick)")
    add_receiver_option(p)
    add_delayed_option(p)
    args = p.parse_args(argv)
    n = args.deliveries or (200 if args.quick else 6000)
    side_seconds = args.side_seconds or (20.0 if args.quick else 30.0)
    rounds = 1 if args.quick else args.rounds
    missing = celery_missing()
    if missing and IN_CI:
        raise SystemExit(f"celery_peer: {missing}; CI must provide it (.ci/run)")
    series = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        fast: Nginx | PythonReceiver = stack.enter_context(fast_receiver(args.receiver, workdir))
        slow = stack.enter_context(
            delayed_receiver(args.delayed, workdir / "slow", args.slow_endpoints, args.delay_ms)
        )
        shapes = {
            "fast": Shape("fast", (("peer-fast", fast.url("/hook/peer-fast")),)),
            "slow": Shape(
                "slow",
                tuple(
                    (f"peer-slow-{i:02d}", loopback_url(port, f"/hook/{i}"))
                    for i, port in enumerate(slow.ports)
                ),
            ),
        }
        tasks: ModuleType | None = None
        broker_url = ""
        if missing is None:
            redis_dir = workdir / "redis"
            redis_dir.mkdir()
            binary = redis_binary()
            assert binary is not None
            broker_url = stack.enter_context(RedisServer(binary, redis_dir)).url
            os.environ["PEER_BROKER_URL"] = broker_url
            os.environ["PEER_SECRET"] = SECRET_VALUE
            sys.path.insert(0, str(BENCH))
            tasks = importlib.import_module("celery_peer_tasks")
        else:
            progress(f"note: Celery sides skipped: {missing}")
        progress(
            f"fast receiver: {fast.note}; slow: {args.slow_endpoints} endpoints answering after "
            f"{args.delay_ms:g} ms; {n} deliveries per side and shape, at most {side_seconds:g}s each, "
            f"{rounds} round(s)"
        )
        for r in range(rounds):
            for shape in shapes.values():
                events = max(1, n // len(shape.hooks))
                lines = [event_line(i) for i in range(events)]
                work = shape.deliveries(lines)
                sides = ["loop"] if shape.name == "fast" else []
                sides += ["dispatcher", *(POOLS if tasks is not None else ())]
                figures = []
                for side in sides:
                    if side == "loop":
                        outcome = run_loop(work, side_seconds)
                    elif side == "dispatcher":
                        outcome = run_dispatcher(
                            workdir / f"round-{r}-{shape.name}", shape, lines, side_seconds
                        )
                    else:
                        assert tasks is not None
                        outcome = run_celery(tasks, broker_url, side, workdir, work, side_seconds)
                    series.add(f"{shape.name}:{side}", outcome.rate)
                    figures.append(f"{side} {outcome.rate:,.0f}/s ({outcome.delivered}/{len(work)})")
                progress(f"round {r + 1}/{rounds} {shape.name}: " + ", ".join(figures))

    shape_names = list(shapes)
    rows: list[list[object]] = []
    for shape_name in shape_names:
        ours = series.median(f"{shape_name}:dispatcher")
        for side in ("dispatcher", "loop", *POOLS):
            values = series.values.get(f"{shape_name}:{side}")
            if not values:
                continue
            med = series.median(f"{shape_name}:{side}")
            rows.append(
                [shape_name, SIDE_LABELS[side], med, f"{min(values):,.0f}-{max(values):,.0f}",
                 "-" if side == "dispatcher" or not med else f"{ours / med:.2f}x"]
            )  # fmt: skip
    print()
    print_table(["shape", "side", "median deliveries/s", "spread (min-max)", "dispatcher is"], rows)
    targets: list[Target] = []
    if tasks is not None:
        targets.append(
            ratio_target("vs Celery prefork", series, "celery-prefork", shape_names, TARGET_PREFORK)
        )
        targets.append(
            ratio_target("vs Celery threads", series, "celery-threads", shape_names, TARGET_THREADS)
        )
        print_targets(targets)
    doc: dict[str, Any] = {
        "deliveries": n,
        "slow_endpoints": args.slow_endpoints,
        "delay_ms": args.delay_ms,
        "side_seconds": side_seconds,
        "fast_receiver": fast.kind,
        "celery": missing or "ran",
        "series": series.as_json(),
        "targets": targets,
    }
    write_result("celery_peer", args.out, args, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
