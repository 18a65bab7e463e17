"""Shared pieces of the benchmarks: processes (dispatcher, nginx, receivers, a blackhole), events, stats and
output.

Everything here talks to 127.0.0.1 or to Unix sockets in the benchmark's own temporary directory, and every
process it starts is stopped by ``close()`` (each class is a context manager). Webhook files generated here
only ever point at ``http://127.0.0.1:PORT/...``, and the dispatcher always runs with
``--allow-cidr 127.0.0.1/32``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS_DIR = BENCH / "results"
BIN = Path(sys.executable).parent  # the venv's bin: the installed console scripts
LOOPBACK = "127.0.0.1"
ALLOW_CIDR = "127.0.0.1/32"
SECRET_ENV = "WEBHOOK_BENCH_SECRET"
SECRET_VALUE = "bench-signing-secret-not-a-real-one"
STORE_FILE = "dispatch.sqlite3"  # dispatcher.app.STORE_FILE


# -- command line and output ---------------------------------------------------------------------------------


def parser(doc: str, *, rounds: int) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--rounds``, ``--quick`` and ``--out``.

    Also makes SIGTERM exit through ``SystemExit``, so the ``with`` blocks stop every process started.
    """
    exit_on_sigterm()
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--rounds", type=int, default=rounds, help=f"rounds; medians are reported (default {rounds})"
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, one round: keeps the script working in CI"
    )
    p.add_argument(
        "--out", type=Path, help="JSON results file (default bench/results/<name>.json; quick/<name>.json)"
    )
    return p


def exit_on_sigterm() -> None:
    def stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def add_receiver_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--receiver",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="fast receiver: nginx answering 204 when installed (auto), or the Python one",
    )


@dataclass(frozen=True)
class Target:
    """One figure against its target, as the summary table shows it."""

    what: str
    measured: float
    unit: str
    baseline: float | None
    baseline_what: str
    target: str
    met: bool
    ratio: float | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Target:
        return cls(
            what=str(doc["what"]),
            measured=float(doc["measured"]),
            unit=str(doc["unit"]),
            baseline=None if doc.get("baseline") is None else float(doc["baseline"]),
            baseline_what=str(doc.get("baseline_what", "")),
            target=str(doc["target"]),
            met=bool(doc["met"]),
            ratio=None if doc.get("ratio") is None else float(doc["ratio"]),
        )


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain text table, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        )

    print(line(list(headers)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row).rstrip())


def _cell(value: object) -> str:
    if isinstance(value, float):
        return number(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return text == "-"
    return True


def progress(message: str) -> None:
    """A line about the run in progress (stdout, flushed, so it interleaves with the tables)."""
    print(message, flush=True)


def number(value: float) -> str:
    """Three significant digits below 100, whole numbers with thousands separators above."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def print_targets(targets: Sequence[Target]) -> None:
    print()
    print_table(
        ["what", "measured", "baseline", "ratio", "target", "met"],
        [
            [
                t.what,
                f"{number(t.measured)} {t.unit}",
                "-" if t.baseline is None else f"{number(t.baseline)} {t.unit} ({t.baseline_what})",
                "-" if t.ratio is None else f"{t.ratio:.2f}x",
                t.target,
                "yes" if t.met else "NO",
            ]
            for t in targets
        ],
    )


def write_result(name: str, out: Path | None, args: argparse.Namespace, doc: dict[str, Any]) -> Path:
    """Write ``doc`` plus the machine and the options to ``out`` (default bench/results/<name>.json, or
    bench/results/quick/<name>.json for ``--quick``, so a CI-sized run never replaces the real figures)."""
    quick = bool(getattr(args, "quick", False))
    path = out or (RESULTS_DIR / "quick" if quick else RESULTS_DIR) / f"{name}.json"
    full = {
        "benchmark": name,
        "quick": quick,
        "rounds": getattr(args, "rounds", None),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **doc,
        "targets": [asdict(t) for t in doc.get("targets", [])],
        "code": code_version(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}", flush=True)
    return path


def code_version() -> dict[str, Any]:
    """The commit measured, and whether dispatcher/ or reconciler/ had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--", "dispatcher", "reconciler", "schemas")),
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


# -- ports, files, events ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_seconds: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on port {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {LOOPBACK}:{port} after {timeout_seconds:g}s")


def loopback_url(port: int, path: str) -> str:
    return f"http://{LOOPBACK}:{port}{path}"


def webhook_yaml(
    name: str,
    url: str,
    event_type: str | Sequence[str] = "package.created",
    *,
    status: str = "active",
    timeout_seconds: int | None = None,
    variant: int = 0,
) -> str:
    """One webhook file signed with ``{env: WEBHOOK_BENCH_SECRET}``; ``variant`` varies the optional parts."""
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"benchmark webhooks only point at {LOOPBACK}, not {url!r}")
    types = [event_type] if isinstance(event_type, str) else list(event_type)
    config = [f"    timeout: {timeout_seconds if timeout_seconds is not None else 5 + variant % 20}"]
    if variant % 4 == 3:
        config.append(f"    match: {{channel_id: {variant % 7}}}")
    retry = (
        "  retry_countdown_config:\n    choice: exponential\n    kwargs: {base: 2, factor: 30, limit: 3600}\n"
        "    max_attempts: 12\n"
        if variant % 3 == 1
        else ""
    )
    return (
        "# yaml-language-server: $schema=../schemas/webhook.v1.json\n"
        "apiVersion: webhooks/v1\n"
        "kind: Webhook\n"
        "metadata:\n"
        f"  name: {name}\n"
        f"  labels: {{team: team-{variant % 5}, bench: 'true'}}\n"
        "spec:\n"
        f"  target_url: {url}\n"
        f"  event_type: [{', '.join(json.dumps(t) for t in types)}]\n"
        f"  status: {status}\n"
        f"  secret_key: {{env: {SECRET_ENV}}}\n"
        f"  additional_headers:\n    X-Source: oms\n    X-Tenant: tenant-{variant % 50}\n"
        "  config:\n" + "\n".join(config) + "\n" + retry
    )


def write_atomic(path: Path, text: str) -> None:
    """Write like an editor's save or a git checkout: a hidden temporary file renamed over the target."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def one_webhook_config(workdir: Path, name: str, url: str, event_type: str = "package.created") -> Path:
    """``workdir/webhooks.d`` holding one active webhook (timeout 10 s) for ``event_type``."""
    config = workdir / "webhooks.d"
    config.mkdir()
    write_atomic(config / f"{name}.yaml", webhook_yaml(name, url, event_type, timeout_seconds=10))
    return config


def event_line(i: int, event_type: str = "package.created", *, sent_at: float | None = None) -> bytes:
    """One NDJSON envelope as the OMS sends it (about 330 bytes), with a fresh uuid."""
    payload: dict[str, Any] = {
        "id": i,
        "order_number": f"ORD-{i:09d}",
        "channel_id": 3,
        "status": "created",
        "stock_location": "WH-AMS-01",
        "items": [{"sku": f"SKU-{i % 9973:05d}", "quantity": 1 + i % 3}, {"sku": "SKU-00042", "quantity": 1}],
        "shipping": {"carrier": "dhl", "service": "express", "country": "NL"},
        "created_at": "2026-11-28T10:00:00Z",
    }
    if sent_at is not None:
        payload["sent_at"] = sent_at
    doc = {"event": {"type": event_type, "uuid": uuid.uuid4().hex}, "payload": payload}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


# -- receivers -----------------------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


_NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen {host}:{port};
        location / {{ return 204; }}
    }}
}}
"""


class _Process:
    """A child process stopped with SIGTERM (then SIGKILL) by ``close()``."""

    proc: subprocess.Popen[bytes]
    killed = False  # it had to be killed: it did not exit within the timeout after SIGTERM

    def close(self, timeout_seconds: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Nginx(_Process):
    """nginx answering 204 to everything on 127.0.0.1:PORT: one worker, no access log, private prefix."""

    kind = "nginx"

    def __init__(self, binary: str, workdir: Path) -> None:
        self.dir = workdir / "nginx"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(dir=self.dir, host=LOOPBACK, port=self.port), encoding="utf-8")
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(self.port, 10.0, self.proc)
        except BaseException:
            self.close()
            raise
        self.note = f"nginx ({binary}) answering 204, 1 worker, access log off"

    def url(self, path: str = "/hook") -> str:
        return loopback_url(self.port, path)


class PythonReceiver(_Process):
    """``bench/receiver.py`` in its own process: counts POSTs and records latencies (see that file)."""

    kind = "python"

    def __init__(self, workdir: Path, status: int = 204) -> None:
        self.port = free_port()
        self._log = open(workdir / f"receiver-{self.port}.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "receiver.py"), "--port", str(self.port), "--status", str(status)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        try:
            wait_port(self.port, 10.0, self.proc)
        except BaseException:
            self.close()
            raise
        self.note = f"Python ThreadingHTTPServer (bench/receiver.py) answering {status}"

    def url(self, path: str = "/hook") -> str:
        return loopback_url(self.port, path)

    def stats(self) -> dict[str, Any]:
        return json.loads(http_get(self.port, "/stats"))  # type: ignore[no-any-return]

    def reset(self) -> None:
        http_get(self.port, "/reset")

    def close(self, timeout_seconds: float = 10.0) -> None:
        super().close(timeout_seconds)
        self._log.close()


def fast_receiver(choice: str, workdir: Path) -> Nginx | PythonReceiver:
    """nginx when asked for or installed; else the Python receiver, saying so on stdout."""
    binary = nginx_binary()
    if choice == "nginx" and binary is None:
        raise SystemExit("--receiver nginx: nginx is not installed")
    if choice != "python" and binary is not None:
        return Nginx(binary, workdir)
    if choice == "auto":
        print(
            "NOTE: nginx is not installed; falling back to the Python receiver (figures are not comparable)"
        )
    return PythonReceiver(workdir)


class LoopbackListener:
    """A TCP server on 127.0.0.1 whose thread accepts connections and hands each to ``_take`` (counted in
    ``accepted``); ``close()`` stops accepting, then ``_release`` lets go of what ``_take`` kept. A subclass
    starts ``self._thread`` once its own state is set."""

    def __init__(self, name: str, backlog: int) -> None:
        self._sock = socket.create_server((LOOPBACK, 0), backlog=backlog)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name=name, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return loopback_url(self.port, path)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Nothing kept by default."""

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Blackhole(LoopbackListener):
    """A TCP endpoint on 127.0.0.1 that accepts connections and never reads or answers.

    A thread accepts and holds every connection (the oldest are closed beyond ``max_held``), so a client sees
    a connected socket and waits until its own read timeout.
    """

    def __init__(self, max_held: int = 4096) -> None:
        super().__init__("blackhole", backlog=1024)
        self._held: list[socket.socket] = []
        self._max_held = max_held
        self._thread.start()

    def _take(self, conn: socket.socket) -> None:
        self._held.append(conn)
        if len(self._held) > self._max_held:
            self._held.pop(0).close()

    def _release(self) -> None:
        for conn in self._held:
            conn.close()
        self._held.clear()


def http_get(port: int, path: str, timeout_seconds: float = 10.0) -> bytes:
    """GET from a loopback server (http.client: no proxy from the environment can get involved)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout_seconds)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
        return body
    finally:
        conn.close()


# -- the dispatcher ------------------------------------------------------------------------------------------


def console_script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise SystemExit(f"{path} not found: run the benchmarks with the python of the project's venv")
    return str(path)


class Dispatcher(_Process):
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
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dispatch exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket_path.exists():
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                        s.connect(str(self.socket_path))
                    if self.metrics_port is not None:
                        http_get(self.metrics_port, "/healthz", 2.0)
                    return
                except (OSError, RuntimeError, http.client.HTTPException):
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"dispatch not ready after {timeout_seconds:g}s:\n{self.log_tail()}")

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


# -- publishing and watching the store -----------------------------------------------------------------------


@dataclass
class PublishResult:
    sent: int
    accepted: int
    rejected: int
    started: float  # time.time() when the first byte was sent
    last_ack_seconds: float  # from the first byte sent to the last acknowledgement read
    first_rejection: str | None = None

    @property
    def missing(self) -> int:
        return self.sent - self.accepted - self.rejected


def publish_pipelined(socket_path: Path, data: bytes, timeout_seconds: float = 300.0) -> PublishResult:
    """Send every line of ``data`` on one connection from one thread, read the acks in this one."""
    expected = data.count(b"\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_path))
        sock.settimeout(timeout_seconds)
        send_error: list[BaseException] = []

        def send() -> None:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                send_error.append(exc)

        sender = threading.Thread(target=send, name="bench-sender", daemon=True)
        started_wall = time.time()
        start = time.perf_counter()
        sender.start()
        acks = accepted = rejected = 0
        tail = b""
        first_rejection: str | None = None
        try:
            while acks < expected:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                block = tail + chunk
                cut = block.rfind(b"\n") + 1
                tail = block[cut:]
                complete = block[:cut]
                acks += complete.count(b"\n")
                accepted += complete.count(b'"ok":true')
                if b'"ok":false' in complete or b'"ok": false' in complete:
                    bad = [x for x in complete.split(b"\n") if b"false" in x and b'"ok"' in x]
                    rejected += len(bad)
                    first_rejection = first_rejection or bad[0].decode(errors="replace")
        except TimeoutError:
            pass
        elapsed = time.perf_counter() - start
        sender.join(10)
    if send_error and acks == 0:
        raise RuntimeError(f"publishing failed: {send_error[0]}")
    return PublishResult(expected, accepted, rejected, started_wall, elapsed, first_rejection)


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
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.delivered_count() >= n:
                return True
            time.sleep(poll_seconds)
        return self.delivered_count() >= n

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class Rounds:
    """Per-round values of named series, with their medians."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return median(self.values.get(name, []))

    def as_json(self) -> dict[str, Any]:
        return {
            name: {"median": round(median(v), 4), "rounds": [round(x, 4) for x in v]}
            for name, v in self.values.items()
        }
