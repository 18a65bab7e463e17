#!/usr/bin/env python3
"""Benchmark: the PostgreSQL store against the SQLite one, in the same run (issue #11 acceptance 4).

    python bench/postgres.py --events 5000 --rounds 3

Per round, each side a fresh store and fresh ``dispatch run`` processes (default workers, --per-endpoint 8)
with one webhook to a fast local receiver (nginx answering 204 when installed, else the Python one):

- ``sqlite x1``: one dispatcher on its embedded SQLite store (the default).
- ``postgresql x1``: one dispatcher with ``--store postgresql://...``.
- ``postgresql x2``: two dispatchers on the same database, each sent half the events at the same time.
- ``postgresql x1 per-endpoint 64``: one dispatcher on PostgreSQL with 64 slots for the one endpoint.

N events are published by a pipelining client per dispatcher. Delivery throughput = N / (first byte
published -> last delivery recorded as delivered in the store). Ingest rate = N / (first byte -> last ack):
on PostgreSQL an ack is sent only after the COMMIT returned with ``synchronous_commit = on`` (the WAL
flushed to disk; ``fsync`` on). Where the time goes: CPU seconds of the dispatcher processes and of the
PostgreSQL server processes per 1,000 deliveries, and wall time.

The cluster is a throwaway one started here (initdb as the ``postgres`` user when run as root), on a Unix
socket in a temporary directory, with PostgreSQL's default settings: no TCP, nothing leaves the machine.
Skipped (exit 0, said on stdout) when PostgreSQL is not installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from common import (
    Dispatcher,
    Nginx,
    PythonReceiver,
    Rounds,
    StoreWatch,
    add_receiver_option,
    event_line,
    fast_receiver,
    one_webhook_config,
    parser,
    print_table,
    progress,
    publish_pipelined,
    write_result,
)

WEBHOOK = "bench-postgres"


class Cluster:
    """initdb + pg_ctl in ``root`` (as ``postgres`` when root), Unix socket only; ``close()`` stops it."""

    def __init__(self, root: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        self.bin = Path(found[-1]).parent
        self.root = root
        self.data = root / "data"
        self.sock = root / "sock"
        self.sock.mkdir(parents=True)
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            for path in (root, self.sock):
                shutil.chown(path, "postgres")
            root.parent.chmod(0o711)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        options = f"-k {self.sock} -c listen_addresses='' -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(root / "log"), "-o", options, "start")
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            row = conn.execute("SHOW synchronous_commit").fetchone()
            self.synchronous_commit = str(row[0]) if row else "?"
        self._databases = 0

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.sock}"

    def database(self) -> str:
        self._databases += 1
        name = f"bench{self._databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def cpu_seconds(self) -> float:
        """User plus system CPU of the server's processes so far (the postmaster and its children)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry.name) == pid or int(fields[1]) == pid:
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


def _pg_delivered(url: str) -> tuple[int, float | None]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT COALESCE(sum(n), 0) FROM delivery_counts WHERE status = 'delivered'),"
            " (SELECT max(updated_at) FROM deliveries WHERE status = 'delivered')"
        ).fetchone()
    assert row is not None
    return int(row[0]), None if row[1] is None else float(row[1])


def _wait(done: Callable[[], bool], timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not delivered within {timeout_seconds:g}s")
        time.sleep(0.05)


def run_side(
    workdir: Path,
    url: str,
    lines: Sequence[bytes],
    *,
    store: str | None,
    dispatchers: int,
    cluster: Cluster | None,
    timeout_seconds: float,
    extra_args: Sequence[str] = (),
) -> dict[str, float]:
    """One side of a round: its dispatchers, the events split between them, the figures."""
    config = one_webhook_config(workdir, WEBHOOK, url)
    n = len(lines)
    extra = [*(["--store", store] if store else []), *extra_args]
    procs = [Dispatcher(workdir, config, name=f"d{i}", extra_args=extra) for i in range(dispatchers)]
    try:
        cpu_before = sum(p.cpu_seconds() for p in procs)
        pg_before = cluster.cpu_seconds() if cluster else 0.0
        shares = [lines[i::dispatchers] for i in range(dispatchers)]
        results: list[object] = [None] * dispatchers

        def publish(i: int) -> None:
            results[i] = publish_pipelined(procs[i].socket_path, b"".join(shares[i]), timeout_seconds)

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(dispatchers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        started = min(r.started for r in results)  # type: ignore[attr-defined]
        last_ack = max(r.started + r.last_ack_seconds for r in results)  # type: ignore[attr-defined]
        accepted = sum(r.accepted for r in results)  # type: ignore[attr-defined]
        if accepted != n:
            raise RuntimeError(f"{accepted} of {n} events accepted")
        if store:
            _wait(lambda: _pg_delivered(store)[0] >= n, timeout_seconds)
            _, last = _pg_delivered(store)
        else:
            with StoreWatch(procs[0].store_path) as watch:
                _wait(lambda: watch.delivered_count() >= n, timeout_seconds)
                _, last = watch.delivered()
        assert last is not None
        wall = float(last) - started
        cpu = sum(p.cpu_seconds() for p in procs) - cpu_before
        pg_cpu = (cluster.cpu_seconds() - pg_before) if cluster else 0.0
    finally:
        for p in procs:
            p.close()
    return {
        "deliveries_per_second": n / wall,
        "ingest_per_second": n / (last_ack - started),
        "dispatcher_cpu_s_per_1000": 1000 * cpu / n,
        "postgres_cpu_s_per_1000": 1000 * pg_cpu / n,
        "wall_s": wall,
    }


#: label, on PostgreSQL?, dispatchers, extra arguments
SIDES: tuple[tuple[str, bool, int, tuple[str, ...]], ...] = (
    ("sqlite x1", False, 1, ()),
    ("postgresql x1", True, 1, ()),
    ("postgresql x2", True, 2, ()),
    # One endpoint's slots are the bound on PostgreSQL (see the README): the same with 64 of them.
    ("postgresql x1 per-endpoint 64", True, 1, ("--per-endpoint", "64")),
)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__ or "", rounds=3)
    p.add_argument("--events", type=int, help="events per side and round (default 5000; 200 with --quick)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a side may take at most")
    add_receiver_option(p)
    args = p.parse_args(argv)
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        print("bench/postgres.py: PostgreSQL is not installed here; skipped")
        return 0
    n = args.events or (200 if args.quick else 5_000)
    rounds = 1 if args.quick else args.rounds
    series = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-postgres-") as tmp:
        cluster = Cluster(Path(tmp) / "pg")
        try:
            receiver: Nginx | PythonReceiver = fast_receiver(args.receiver, Path(tmp))
            with receiver:
                progress(
                    f"receiver: {receiver.note}; {n} events per side, {rounds} round(s); PostgreSQL "
                    f"synchronous_commit={cluster.synchronous_commit}"
                )
                url = receiver.url(f"/hook/{WEBHOOK}")
                for r in range(rounds):
                    for label, on_pg, count, extra in SIDES:
                        workdir = Path(tmp) / f"r{r}-{label.replace(' ', '-')}"
                        workdir.mkdir()
                        figures = run_side(
                            workdir,
                            url,
                            [event_line(i) for i in range(n)],
                            store=cluster.database() if on_pg else None,
                            dispatchers=count,
                            cluster=cluster if on_pg else None,
                            timeout_seconds=args.timeout,
                            extra_args=extra,
                        )
                        for key, value in figures.items():
                            series.add(f"{label}: {key}", value)
                        progress(
                            f"round {r + 1}/{rounds} {label}: {figures['deliveries_per_second']:,.0f} "
                            f"deliveries/s, ingest {figures['ingest_per_second']:,.0f} acks/s"
                        )
                receiver_kind = receiver.kind
        finally:
            cluster.close()
    rows = []
    for label, _, _, _ in SIDES:
        m = {k: series.median(f"{label}: {k}") for k in (
            "deliveries_per_second", "ingest_per_second", "dispatcher_cpu_s_per_1000",
            "postgres_cpu_s_per_1000")}  # fmt: skip
        rows.append([label, m["deliveries_per_second"], m["ingest_per_second"],
                     m["dispatcher_cpu_s_per_1000"], m["postgres_cpu_s_per_1000"]])  # fmt: skip
    print()
    print_table(
        ["store", "deliveries/s", "ingest acks/s", "dispatcher CPU s/1000", "postgres CPU s/1000"], rows
    )
    write_result(
        "postgres",
        args.out,
        args,
        {"events": n, "receiver": receiver_kind, "synchronous_commit": cluster.synchronous_commit,
         "series": series.as_json()},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
