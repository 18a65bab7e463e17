"""The processes the benchmarks start and watch: a base that stops a child with SIGTERM (then SIGKILL), the
dispatcher itself (``dispatch run --socket``, loopback deliveries only, logging to a file) with its memory and
CPU read from /proc, and a read-only look at its SQLite store.

Every process here is stopped by ``close()`` (each class is a context manager).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from loopback import BIN, LOOPBACK, NotReady, free_port, http_get, poll_until, stop_process, wait_socket
from report import progress
from workloads import SECRET_ENV, SECRET_VALUE

ALLOW_CIDR = "127.0.0.1/32"
STORE_FILE = "dispatch.sqlite3"  # dispatcher.app.STORE_FILE


class ChildProcess:
    """A child process stopped with SIGTERM (then SIGKILL) by ``close()``."""

    proc: subprocess.Popen[bytes]
    killed = False  # it had to be killed: it did not exit within the timeout after SIGTERM

    def close(self, timeout_seconds: float = 10.0) -> None:
        """SIGTERM; SIGKILL after ``timeout_seconds`` (then ``killed`` is true)."""
        self.killed = stop_process(self.proc, timeout_seconds) or self.killed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def console_script(name: str) -> str:
    """The installed console script ``name``; exits when this python is not the project's venv."""
    path = BIN / name
    if not path.exists():
        raise SystemExit(f"{path} not found: run the benchmarks with the python of the project's venv")
    return str(path)


class Dispatcher(ChildProcess):
    """``dispatch run --socket`` on a config directory, loopback deliveries only, logging to a file."""

    def __init__(
        self,
        workdir: Path,
        config_dir: Path,
        *,
        name: str = "dispatch",
        metrics: bool = False,
        watch: bool = False,
        extra_args: Sequence[str] = (),
        ready_timeout_seconds: float = 120.0,
    ) -> None:
        self.state = workdir / f"{name}-state"
        self.socket_path = workdir / f"{name}.sock"
        self.log_path = workdir / f"{name}.log"
        self.metrics_port = free_port() if metrics else None
        args = [
            console_script("dispatch"), "run", "--config", str(config_dir), "--socket", str(self.socket_path),
            "--state", str(self.state), "--allow-cidr", ALLOW_CIDR, "--watch" if watch else "--no-watch",
        ]  # fmt: skip
        if self.metrics_port is not None:
            args += ["--metrics", f"{LOOPBACK}:{self.metrics_port}"]
        args += list(extra_args)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env={**os.environ, SECRET_ENV: SECRET_VALUE},
        )
        self.pid = self.proc.pid
        try:
            self._wait_ready(ready_timeout_seconds)
        except BaseException:
            self.close()
            raise
        self.ready_seconds = time.perf_counter() - self.started

    @property
    def store_path(self) -> Path:
        return self.state / STORE_FILE

    def _wait_ready(self, timeout_seconds: float) -> None:
        """Until the socket accepts and, with metrics, /healthz answers 200."""
        try:
            wait_socket(self.socket_path, timeout_seconds, self.proc, also=self._healthy)
        except NotReady as exc:
            raise RuntimeError(f"dispatch not ready: {exc}:\n{self.log_tail()}") from None

    def _healthy(self) -> bool:
        if self.metrics_port is None:
            return True
        try:
            http_get(self.metrics_port, "/healthz", 2.0)
        except (OSError, RuntimeError, http.client.HTTPException):
            return False
        return True

    def log_tail(self, limit: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-limit:]

    def processes(self) -> list[int]:
        """The dispatcher's pid and its descendants' (it may run deliveries in child processes)."""
        parents: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    parents[int(entry.name)] = int(_proc_stat(int(entry.name))[1])
        found = [self.pid]
        for pid in found:  # grows while iterating: breadth-first
            found.extend(child for child, parent in parents.items() if parent == pid)
        return found

    def memory_mb(self) -> dict[str, float]:
        """Memory of the dispatcher's processes: the main one's VmRSS and VmHWM, and over the whole process
        tree the sum of VmRSS and of PSS (shared pages split among the processes sharing them, so counted
        once)."""
        figures = {"main_rss_mb": 0.0, "main_hwm_mb": 0.0, "tree_rss_mb": 0.0, "tree_pss_mb": 0.0}
        for pid in self.processes():
            with contextlib.suppress(OSError):
                status = _proc_fields(f"/proc/{pid}/status")
                rollup = _proc_fields(f"/proc/{pid}/smaps_rollup")
                figures["tree_rss_mb"] += status.get("VmRSS", 0) / 1024
                figures["tree_pss_mb"] += rollup.get("Pss", 0) / 1024
                if pid == self.pid:
                    figures["main_rss_mb"] = status.get("VmRSS", 0) / 1024
                    figures["main_hwm_mb"] = status.get("VmHWM", 0) / 1024
        figures["processes"] = float(len(self.processes()))
        return figures

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far by the dispatcher's processes (from /proc/PID/stat)."""
        total = 0
        for pid in self.processes():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _proc_stat(pid)
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def metric(self, name: str) -> float | None:
        """One unlabelled sample from /metrics (needs ``metrics=True``)."""
        assert self.metrics_port is not None
        for line in http_get(self.metrics_port, "/metrics").decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def status(self) -> dict[str, Any]:
        assert self.metrics_port is not None
        return json.loads(http_get(self.metrics_port, "/status", 30.0))  # type: ignore[no-any-return]

    def close(self, timeout_seconds: float = 20.0) -> None:
        """SIGTERM; SIGKILL after ``timeout_seconds`` (said on stdout: the spec wants an exit within the
        longest webhook timeout)."""
        if self._log.closed:
            return
        super().close(timeout_seconds)
        self._log.close()
        if self.killed:
            progress(f"  note: dispatch did not exit within {timeout_seconds:g}s of SIGTERM; it was killed")


def _proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, ...] (field 3 onwards of proc(5))."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        return f.read().rsplit(")", 1)[1].split()


def _proc_fields(path: str) -> dict[str, int]:
    """``Name:   123 kB`` lines of /proc/PID/status or smaps_rollup, in kB."""
    values: dict[str, int] = {}
    with open(path, encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                values[key] = int(parts[0])
    return values


class StoreWatch:
    """A read-only look at the dispatcher's SQLite file (bench code only: the dispatcher owns the store)."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10)

    def delivered(self, webhook_prefix: str | None = None) -> tuple[int, float | None]:
        """How many deliveries are recorded as delivered, and the time the last one was recorded."""
        sql = "SELECT COUNT(*), MAX(updated_at) FROM deliveries WHERE status = 'delivered'"
        params: tuple[str, ...] = ()
        if webhook_prefix is not None:
            sql += " AND webhook LIKE ?"
            params = (webhook_prefix + "%",)
        count, last = self._conn.execute(sql, params).fetchone()
        return int(count), last

    def delivered_count(self) -> int:
        (count,) = self._conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'").fetchone()
        return int(count)

    def counts(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall()
        return {str(status): int(n) for status, n in rows}

    def wait_delivered(self, n: int, timeout_seconds: float, poll_seconds: float = 0.05) -> bool:
        """Poll until at least ``n`` deliveries are delivered; False when ``timeout_seconds`` pass first."""
        return poll_until(lambda: self.delivered_count() >= n, timeout_seconds, poll_seconds)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
