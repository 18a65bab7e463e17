#!/usr/bin/env python3
"""Benchmark: acknowledged events per second through the socket, acks after durable commit (SPEC section 9).

    python bench/ingest.py --events 50000 --rounds 3

A pipelining client sends N NDJSON lines on one connection from one thread and reads the acks in another;
the time runs from the first byte sent to the last ack read. Two variants, each on a fresh ``dispatch run``:

- ``0 webhooks``: the events' type matches no webhook, so each event is one stored row and no delivery;
- ``1 webhook``: every event routes to one webhook pointing at nginx answering 204 (the Python receiver when
  nginx is missing), so each event also creates a delivery, which is attempted while ingest goes on. The
  deliveries made by the time the last ack is read are counted: the rate they give shows that the ratio was
  measured while delivering at full speed (compare ``bench/throughput.py``), not while delivery waited.

Baseline, per variant: a raw ``sqlite3`` loop in this process inserting the same rows (events, and
deliveries for the second variant) into a store created by the dispatcher's own schema, with the same
PRAGMAs (WAL, synchronous=FULL), in transactions of as many lines as one 64 KiB socket read holds. It shows
what the store alone costs on this disk, so the gap is the dispatcher's own overhead.
Target: >= 20,000 acknowledged events/s (medians of the rounds).
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import (
    Dispatcher,
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
from dispatcher.store.sqlite import SQLiteStore

TARGET_PER_SECOND = 20_000.0
READ_BYTES = 1 << 16  # what the dispatcher reads from a socket at once
WEBHOOK = "bench-ingest"
VARIANTS = {"0 webhooks": "stock_location.updated", "1 webhook": "package.created"}


def raw_sqlite_seconds(path: Path, lines: Sequence[bytes], with_delivery: bool) -> float:
    """Seconds to insert the rows of these events with plain sqlite3, one transaction per 64 KiB of lines."""
    SQLiteStore(path).close()  # the dispatcher's schema and indexes
    rows = []
    for i, line in enumerate(lines):
        parsed = parse_line(line.rstrip(b"\n"), i + 1)
        assert isinstance(parsed, ParsedEvent)
        rows.append((bytes.fromhex(parsed.uuid), parsed.type, parsed.body))
    batch = max(1, READ_BYTES * len(lines) // sum(len(x) for x in lines))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode = WAL", "synchronous = FULL", "cache_size = -8000", "foreign_keys = ON"):
            conn.execute(f"PRAGMA {pragma}")
        start = time.perf_counter()
        next_id = 1
        for offset in range(0, len(rows), batch):
            chunk = rows[offset : offset + batch]
            now = time.time()
            ids = range(next_id, next_id + len(chunk))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("SELECT next_event_id, next_delivery_id, next_lease_id FROM counters").fetchone()
            conn.executemany(
                "INSERT INTO events (id, uuid, type, created_at, body) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (uuid) DO NOTHING",
                [(i, key, kind, now, body) for i, (key, kind, body) in zip(ids, chunk, strict=True)],
            )
            if with_delivery:
                conn.executemany(
                    "INSERT INTO deliveries (id, event_id, webhook, next_attempt_at, lease_id,"
                    " lease_expires_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(i, i, WEBHOOK, now, offset + 1, now + 120, now, now) for i in ids],
                )
            next_id += len(chunk)
            conn.execute(
                "UPDATE counters SET next_event_id = ?, next_delivery_id = ?, next_lease_id = ?",
                (next_id, next_id, offset + 2),
            )
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def dispatcher_seconds(
    workdir: Path, url: str, lines: Sequence[bytes], timeout_seconds: float
) -> tuple[float, int]:
    """Seconds from the first byte sent to the last ack read, and the deliveries made by then."""
    config = one_webhook_config(workdir, WEBHOOK, url)
    with Dispatcher(workdir, config) as dispatcher:
        result = publish_pipelined(dispatcher.socket_path, b"".join(lines), timeout_seconds)
        with StoreWatch(dispatcher.store_path) as watch:
            delivered = watch.delivered_count()
    if result.accepted != len(lines):
        raise RuntimeError(f"{result.accepted} of {len(lines)} accepted: {result.first_rejection}")
    return result.last_ack_seconds, delivered


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__ or "", rounds=3)
    p.add_argument("--events", type=int, help="events per round (default 50000; 2000 with --quick)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a round may take at most")
    add_receiver_option(p)
    args = p.parse_args(argv)
    n = args.events or (2000 if args.quick else 50_000)
    rounds = 1 if args.quick else args.rounds
    series = Rounds()
    with (
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp,
        fast_receiver(args.receiver, Path(tmp)) as receiver,
    ):
        receiver_note = receiver.note
        progress(f"receiver: {receiver.note}; {n} events per round, {rounds} round(s)")
        for r in range(rounds):
            for variant, event_type in VARIANTS.items():
                lines = [event_line(i, event_type) for i in range(n)]
                tag = f"round-{r}-{variant.split()[0]}"
                workdir = Path(tmp) / tag
                workdir.mkdir()
                url = receiver.url(f"/hook/{WEBHOOK}")
                took, delivered = dispatcher_seconds(workdir, url, lines, args.timeout)
                raw = raw_sqlite_seconds(Path(tmp) / f"{tag}-raw.sqlite3", lines, variant == "1 webhook")
                series.add(f"{variant}: dispatcher", n / took)
                series.add(f"{variant}: raw sqlite3", n / raw)
                series.add(f"{variant}: delivered while ingesting", delivered / took)
                progress(
                    f"round {r + 1}/{rounds} {variant}: dispatcher {n / took:,.0f} acks/s, "
                    f"raw sqlite3 {n / raw:,.0f} rows/s, {delivered:,} delivered meanwhile "
                    f"({delivered / took:,.0f}/s)"
                )
    print()
    print_table(
        ["events", "variant", "dispatcher acks/s", "raw sqlite3 events/s", "ratio", "delivered/s meanwhile"],
        [
            [
                n,
                variant,
                series.median(f"{variant}: dispatcher"),
                series.median(f"{variant}: raw sqlite3"),
                f"{series.median(f'{variant}: dispatcher') / series.median(f'{variant}: raw sqlite3'):.2f}x",
                series.median(f"{variant}: delivered while ingesting"),
            ]
            for variant in VARIANTS
        ],
    )
    idle, busy = (series.median(f"{v}: dispatcher") for v in VARIANTS)
    print(f"\ningest while delivering / ingest with nothing to deliver: {busy / idle:.2f}x")
    targets = []
    for variant in VARIANTS:
        measured, raw = series.median(f"{variant}: dispatcher"), series.median(f"{variant}: raw sqlite3")
        targets.append(
            Target(
                what=f"ingest ({variant})",
                measured=measured,
                unit="events/s",
                baseline=raw,
                baseline_what="raw sqlite3 inserts",
                target=f">= {TARGET_PER_SECOND:,.0f} events/s",
                met=measured >= TARGET_PER_SECOND,
                ratio=measured / raw,
            )
        )
    print_targets(targets)
    write_result(
        "ingest",
        args.out,
        args,
        {"events": n, "receiver_note": receiver_note, "series": series.as_json(), "targets": targets},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
