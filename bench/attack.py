#!/usr/bin/env python3
"""Benchmark: isolation under attack (SPEC 9, issue #9 acceptance 3).

    python bench/attack.py --events 2000 --rounds 3

"While one client floods hostile lines and 8 receivers stall in the header phase, other clients' acks keep
flowing and a healthy webhook's delivery rate stays >= 0.9x its rate without them."

- attack: a fresh ``dispatch run`` with one healthy webhook (nginx answering 204; the Python receiver when
  nginx is missing) and 8 webhooks, all for the same event type, each pointing at its own stalling receiver
  on 127.0.0.1 that accepts, reads the request and then never finishes its answer: it trickles the status
  line one byte per 0.3 s, sends ``HTTP/1.1 100 Continue`` again and again, sends one more header every
  0.3 s, or sends a huge header block slowly (the four kinds, twice each; ``config.timeout`` 5 s). One
  client floods hostile lines on its own connection the whole time (deeply nested JSON, NaN, lone
  surrogates escaped and raw, invalid JSON, lines over the 1 MiB limit) and reads its acks. The attack is
  under way before the measurement: a warm-up batch of events is published and the measurement starts once
  every stalling receiver has cost at least one attempt (``--no-warmup`` measures from a cold start).
  Then a well-behaved client publishes N events (pipelined).
- baseline: the same run, same warm-up, with only the healthy webhook and no flood.
- measured: healthy rate = N / (the last of the N healthy deliveries recorded - first byte of the N
  published); the well-behaved client's ack rate = N / (its last ack - its first byte), and that every one of
  its lines was acknowledged ok.

Target: healthy rate under attack >= 0.9 x baseline (medians of the rounds, interleaved); every line of the
well-behaved client acknowledged.

To see what each half of the attack costs: ``--no-flood`` (stalling receivers only), ``--no-stall`` (the
flood only), ``--stalls silent`` (receivers that say nothing at all: what a socket read timeout alone already
bounded, as a control for the header-phase kinds).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from common import (
    Dispatcher,
    LoopbackListener,
    Rounds,
    StoreWatch,
    Target,
    add_receiver_option,
    event_line,
    fast_receiver,
    parser,
    poll_until,
    print_table,
    print_targets,
    progress,
    publish_pipelined,
    webhook_yaml,
    write_atomic,
    write_result,
)

TARGET_RATIO = 0.9
STALLED = 8
STALLED_TIMEOUT_SECONDS = 5
HEALTHY = "bench-healthy"
STALLED_PREFIX = "bench-stalled-"
MAX_LINE_BYTES = 1 << 20  # the dispatcher's default --max-line-bytes

# -- stalling receivers ----------------------------------------------------------------------------------

#: One way of never finishing an answer: (connection, stop flag) -> returns when stopped or hung up on.
Stall = Callable[[socket.socket, threading.Event], None]


def _send_every(
    conn: socket.socket, stop: threading.Event, interval: float, piece: Callable[[int], bytes]
) -> None:
    n = 0
    while not stop.wait(interval):
        data = piece(n)
        if not data:
            return
        conn.sendall(data)
        n += 1


def trickle_status_line(conn: socket.socket, stop: threading.Event) -> None:
    """``HTTP/1.1 200 OOOO...``, one byte every 0.3 s, never the end of the line."""
    head = b"HTTP/1.1 200 "
    _send_every(conn, stop, 0.3, lambda n: head[n : n + 1] if n < len(head) else b"O")


def continue_forever(conn: socket.socket, stop: threading.Event) -> None:
    """``100 Continue`` every 0.2 s, never a final answer."""
    _send_every(conn, stop, 0.2, lambda n: b"HTTP/1.1 100 Continue\r\n\r\n")


def headers_forever(conn: socket.socket, stop: threading.Event) -> None:
    """A status line, then one more header every 0.3 s, never the blank line."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    _send_every(conn, stop, 0.3, lambda n: b"X-Pad-%d: y\r\n" % n)


def huge_header_block(conn: socket.socket, stop: threading.Event) -> None:
    """Megabytes of headers (99 of 60 kB each), 4 KiB every 0.1 s."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    block = b"".join(b"X-Big-%02d: %s\r\n" % (i, b"z" * 60000) for i in range(99))
    _send_every(conn, stop, 0.1, lambda n: block[n * 4096 : (n + 1) * 4096])


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Says nothing at all (a control: the timeout a socket read timeout alone already enforced)."""
    stop.wait()


STALLS: tuple[Stall, ...] = (trickle_status_line, continue_forever, headers_forever, huge_header_block)
KINDS: dict[str, Stall] = {stall.__name__: stall for stall in (*STALLS, silent)}


class StallingReceiver(LoopbackListener):
    """A TCP server on 127.0.0.1: a thread per connection reads the request head, then runs ``stall``."""

    def __init__(self, stall: Stall) -> None:
        super().__init__(f"stall-{stall.__name__}", backlog=256)
        self.kind = stall.__name__
        self._stall = stall
        self._threads: list[threading.Thread] = []
        self._thread.start()

    def _take(self, conn: socket.socket) -> None:
        thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(1.0)
            head = b""
            while b"\r\n\r\n" not in head and not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
            self._stall(conn, self._stop)

    def _release(self) -> None:
        for thread in self._threads:
            thread.join(5)


# -- the hostile client ----------------------------------------------------------------------------------


def hostile_lines() -> list[bytes]:
    """One cycle of the flood: every kind of line the dispatcher must reject without harm. Lines that a
    lenient parser might accept carry event types no webhook routes (``flood.*``), so they never add
    deliveries to the figures measured."""
    return [
        b"[" * 100_000 + b"\n",  # nested far beyond any parser's recursion limit
        b'{"event": {"type": "flood.nested"}, "payload": ' + b"[" * 5_000 + b"]" * 5_000 + b"}\n",
        b'{"event": {"type": "flood.nan"}, "payload": {"x": NaN}}\n',
        b'{"event": {"type": "flood.inf"}, "payload": {"x": -Infinity}}\n',
        b'{"event": {"type": "flood.\\ud800"}, "payload": {}}\n',  # a lone surrogate, escaped
        b'{"event": {"type": "flood.raw"}, "payload": {"s": "\xed\xa0\x80"}}\n',  # ... and as raw bytes
        b'{"event": {"type": "flood.cut"}, "payload": \n',  # invalid JSON
        b"\xff\xfe not even text\n",
        b'{"event": {"type": "flood.long"}, "payload": "' + b"x" * (MAX_LINE_BYTES + 16) + b'"}\n',
    ]


class Flood:
    """One client sending hostile lines as fast as the dispatcher takes them and reading its acks, until
    closed. When the dispatcher drops its connection it reconnects at once and carries on (an attacker
    would); ``disconnects`` counts how often that happened.

    It runs in a process of its own: the dispatcher budgets rejected input per peer process (and user), so
    a flooding thread in this process would share its budget with the well-behaved client measured here,
    which is not the situation measured (two producers, one hostile)."""

    def __init__(self, socket_path: Path) -> None:
        context = multiprocessing.get_context("spawn")  # no fork: this process has threads
        self._stop = context.Event()
        self._counts = [context.Value("q", 0, lock=False) for _ in range(4)]
        self._process = context.Process(
            target=_flood, args=(str(socket_path), self._stop, *self._counts), name="flood", daemon=True
        )
        self._process.start()

    @property
    def sent(self) -> int:
        return int(self._counts[0].value)

    @property
    def acks(self) -> int:
        return int(self._counts[1].value)

    @property
    def rejected(self) -> int:
        return int(self._counts[2].value)

    @property
    def disconnects(self) -> int:
        return int(self._counts[3].value)

    def close(self) -> None:
        self._stop.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


def _flood(path: str, stop: Any, sent: Any, acks: Any, rejected: Any, disconnects: Any) -> None:
    """The flooding process: send, reconnect when dropped, count (``Flood``'s shared counters)."""
    cycle = hostile_lines()
    current: list[socket.socket] = []

    def read(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 16):
                acks.value += chunk.count(b"\n")
                rejected.value += chunk.count(b'"ok":false') + chunk.count(b'"ok": false')

    def watch_stop() -> None:
        stop.wait()
        for sock in current:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=watch_stop, daemon=True).start()
    while not stop.is_set():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        current[:] = [sock]
        reader = threading.Thread(target=read, args=(sock,), name="flood-reader", daemon=True)
        try:
            sock.connect(path)
            reader.start()
            while not stop.is_set():
                for line in cycle:
                    sock.sendall(line)
                    sent.value += 1
        except OSError:
            if not stop.is_set():
                disconnects.value += 1
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            if reader.is_alive():
                reader.join(10)
            sock.close()


# -- one run ---------------------------------------------------------------------------------------------


def write_config(directory: Path, healthy_url: str, stalled_urls: Sequence[str]) -> None:
    directory.mkdir()
    write_atomic(directory / f"{HEALTHY}.yaml", webhook_yaml(HEALTHY, healthy_url, timeout_seconds=10))
    for i, url in enumerate(stalled_urls):
        name = f"{STALLED_PREFIX}{i}"
        text = webhook_yaml(name, url, timeout_seconds=STALLED_TIMEOUT_SECONDS, variant=4 * i)
        write_atomic(directory / f"{name}.yaml", text)


def _stalled_attempted(store_path: Path) -> int:
    """How many stalled webhooks have had an attempt recorded (read-only, as ``StoreWatch`` reads)."""
    sql = "SELECT COUNT(DISTINCT webhook) FROM deliveries WHERE webhook LIKE ? AND attempts > 0"
    with contextlib.closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=10)) as conn:
        (n,) = conn.execute(sql, (STALLED_PREFIX + "%",)).fetchone()
    return int(n)


def run_once(
    workdir: Path,
    lines: Sequence[bytes],
    warmup: Sequence[bytes],
    *,
    flooded: bool,
    stalled: int,
    timeout_seconds: float,
) -> dict[str, float]:
    """Healthy deliveries/s and the well-behaved client's acks/s for the config in ``workdir/webhooks.d``
    (``stalled`` webhooks of it stalling), with a hostile client flooding when ``flooded``."""
    n = len(lines)
    with Dispatcher(workdir, workdir / "webhooks.d") as dispatcher, ExitStack() as stack:
        flood = Flood(dispatcher.socket_path) if flooded else None
        if flood is not None:
            stack.callback(flood.close)
        store = stack.enter_context(StoreWatch(dispatcher.store_path))
        if warmup:
            result = publish_pipelined(dispatcher.socket_path, b"".join(warmup), timeout_seconds)
            if result.accepted != len(warmup):
                raise RuntimeError(f"warm-up: {result.accepted} of {len(warmup)} accepted")
            warmed = poll_until(
                lambda: (
                    store.delivered(HEALTHY)[0] >= len(warmup)
                    and _stalled_attempted(dispatcher.store_path) >= stalled
                ),
                timeout_seconds,
                0.05,
            )
            if not warmed:
                raise RuntimeError("the warm-up did not complete")
        before = store.delivered(HEALTHY)[0]
        result = publish_pipelined(dispatcher.socket_path, b"".join(lines), timeout_seconds)
        if result.accepted != n:
            raise RuntimeError(f"{result.accepted} of {n} accepted: {result.first_rejection}")
        poll_until(lambda: store.delivered(HEALTHY)[0] >= before + n, timeout_seconds, 0.05)
        count, last = store.delivered(HEALTHY)
        counts = store.counts()
        got = count - before
        if got < n:  # starved: the rate is what got through in the time allowed
            progress(f"  only {got} of {n} healthy deliveries within {timeout_seconds:g}s")
            rate = got / timeout_seconds
        else:
            assert last is not None
            rate = n / (float(last) - result.started)
        figures = {"healthy_per_second": rate, "acks_per_second": n / result.last_ack_seconds}
        if flood is not None:
            flood_figures = {
                "flood_sent": flood.sent,
                "flood_acks": flood.acks,
                "flood_rejected": flood.rejected,
                "flood_disconnects": flood.disconnects,
            }
            figures.update({k: float(v) for k, v in flood_figures.items()})
        progress(
            f"  {workdir.name}: {n} acks in {result.last_ack_seconds:.2f}s, healthy {rate:,.0f}/s, "
            f"deliveries by status {counts}"
            + (
                f"; flood: {flood.sent} lines sent, {flood.rejected} rejected, dropped {flood.disconnects}x"
                if flood
                else ""
            )
        )
        return figures


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__ or "", rounds=3)
    p.add_argument("--events", type=int, help="events per round (default 2000; 100 with --quick)")
    p.add_argument("--warmup-events", type=int, default=50, help="events published before measuring")
    p.add_argument("--no-warmup", action="store_true", help="measure from a cold start (no warm-up)")
    p.add_argument("--no-flood", action="store_true", help="attack with the stalling receivers only")
    p.add_argument("--no-stall", action="store_true", help="attack with the hostile flood only")
    p.add_argument(
        "--stalls",
        nargs="+",
        choices=list(KINDS),
        default=[s.__name__ for s in STALLS],
        help="how the stalling receivers stall, in turn (default: the four header-phase kinds; 'silent' as a "
        "control)",
    )
    p.add_argument(
        "--timeout", type=float, default=180.0, help="seconds allowed for the healthy deliveries of a round"
    )
    add_receiver_option(p)
    args = p.parse_args(argv)
    n = args.events or (100 if args.quick else 2000)
    rounds = 1 if args.quick else args.rounds
    warmup_n = 0 if args.no_warmup else (10 if args.quick else args.warmup_events)
    series = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-attack-") as tmp, ExitStack() as stack:
        receiver = fast_receiver(args.receiver, Path(tmp))
        stack.enter_context(receiver)
        kinds_chosen = [KINDS[name] for name in args.stalls]
        stalling = [
            stack.enter_context(StallingReceiver(kinds_chosen[i % len(kinds_chosen)])) for i in range(STALLED)
        ]
        kinds = ", ".join(args.stalls)
        stall_what = (
            f"{STALLED} webhooks stalling in the header phase ({kinds}; timeout {STALLED_TIMEOUT_SECONDS}s)"
        )
        parts = ([] if args.no_stall else [stall_what]) + ([] if args.no_flood else ["a hostile flood"])
        progress(
            f"receiver: {receiver.note}; 1 healthy webhook; attack: {' + '.join(parts) or 'none'}; "
            f"{warmup_n} warm-up + {n} events per round, {rounds} round(s)"
        )
        for r in range(rounds):
            lines = [event_line(i) for i in range(n)]
            warmup = [event_line(i) for i in range(warmup_n)]
            for side, attack in (("without", False), ("with", True)):
                workdir = Path(tmp) / f"round-{r}-{side}-attack"
                workdir.mkdir()
                stall = attack and not args.no_stall
                stalled_urls = [s.url(f"/hook/stalled-{i}") for i, s in enumerate(stalling)] if stall else []
                write_config(workdir / "webhooks.d", receiver.url("/hook/healthy"), stalled_urls)
                figures = run_once(
                    workdir,
                    lines,
                    warmup,
                    flooded=attack and not args.no_flood,
                    stalled=len(stalled_urls),
                    timeout_seconds=args.timeout,
                )
                for name, value in figures.items():
                    series.add(f"{side}_{name}", value)
            under, calm = (series.values[f"{side}_healthy_per_second"][-1] for side in ("with", "without"))
            progress(f"round {r + 1}/{rounds}: healthy {under:,.0f}/s under attack, {calm:,.0f}/s without")
        accepted = {s.kind: 0 for s in stalling}
        for s in stalling:
            accepted[s.kind] += s.accepted
        receiver_note = receiver.note

    healthy_with, healthy_without = (
        series.median("with_healthy_per_second"),
        series.median("without_healthy_per_second"),
    )
    acks_with, acks_without = series.median("with_acks_per_second"), series.median("without_acks_per_second")
    ratio = healthy_with / healthy_without
    names = ([] if args.no_stall else [f"{STALLED} stalling"]) + ([] if args.no_flood else ["hostile flood"])
    attack_what = " + ".join(names) or "nothing"
    print()
    print_table(
        ["events", "side", "median healthy deliveries/s", "median acks/s (other client)"],
        [
            [n, f"1 healthy + {attack_what}", healthy_with, acks_with],
            [n, "1 healthy only (baseline)", healthy_without, acks_without],
        ],
    )
    targets = [
        Target(
            what="isolation under attack (healthy rate)",
            measured=healthy_with,
            unit="deliveries/s",
            baseline=healthy_without,
            baseline_what="no stalling receivers, no flood",
            target=f">= {TARGET_RATIO:g}x baseline",
            met=ratio >= TARGET_RATIO,
            ratio=ratio,
        ),
        Target(
            what="acks of another client under attack",
            measured=acks_with,
            unit="acks/s",
            baseline=acks_without,
            baseline_what="no stalling receivers, no flood",
            target="every line acknowledged",
            met=True,  # run_once raises when a line of the well-behaved client is not acknowledged ok
            ratio=acks_with / acks_without,
        ),
    ]
    print_targets(targets)
    write_result(
        "attack",
        args.out,
        args,
        {
            "events": n,
            "warmup_events": warmup_n,
            "stalling_receivers": 0 if args.no_stall else STALLED,
            "flood": not args.no_flood,
            "stalled_timeout_seconds": STALLED_TIMEOUT_SECONDS,
            "stalling_connections_accepted": accepted,
            "receiver_note": receiver_note,
            "series": series.as_json(),
            "ratio": round(ratio, 3),
            "targets": targets,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
