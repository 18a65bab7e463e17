"""The receivers the benchmarks deliver to, all on 127.0.0.1: nginx answering 204 when installed, the Python
receiver (``bench/receiver.py``) in its own process, and listeners that accept and then hold or misbehave
(``LoopbackListener``, ``Blackhole``)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from loopback import (
    LOOPBACK,
    LoopbackListener,
    NotReady,
    free_port,
    http_get,
    loopback_url,
    stop_process,
    wait_port,
)
from processes import ChildProcess
from report import BENCH


def _choice_of_receiver(p: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """``FLAG auto|nginx|python`` (default auto: nginx when installed)."""
    p.add_argument(flag, choices=("auto", "nginx", "python"), default="auto", help=help_text)


def add_receiver_option(p: argparse.ArgumentParser) -> None:
    """``--receiver auto|nginx|python``: which fast receiver ``fast_receiver`` starts."""
    _choice_of_receiver(p, "--receiver", "fast receiver: nginx answering 204 if installed (auto), or Python")


def nginx_binary() -> str | None:
    """The nginx binary on PATH or in /usr/sbin; None when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


_NGINX_CONF = """\
{modules}daemon off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; }}
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
{listens}
        location / {{ {answer} }}
    }}
}}
"""

# Debian's libnginx-mod-http-echo: ``echo_sleep`` waits on a timer, holding no worker (the delayed shapes).
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


def _start_nginx(
    binary: str, workdir: Path, ports: list[int], answer: str, modules: str = ""
) -> subprocess.Popen[bytes]:
    """nginx on 127.0.0.1 at every port of ``ports``, answering each request with ``answer`` (a location)."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    listens = "\n".join(f"        listen {LOOPBACK}:{port};" for port in ports)
    conf.write_text(
        _NGINX_CONF.format(dir=workdir, listens=listens, answer=answer, modules=modules), encoding="utf-8"
    )
    proc = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for port in ports:
            wait_port(port, 10.0, proc)
    except BaseException:
        stop_process(proc, 10.0)
        raise
    return proc


class Nginx(ChildProcess):
    """nginx answering 204 to everything on 127.0.0.1:PORT: one worker, no access log, private prefix."""

    kind = "nginx"

    def __init__(self, binary: str, workdir: Path) -> None:
        self.dir = workdir / "nginx"
        self.port = free_port()
        self.proc = _start_nginx(binary, self.dir, [self.port], "return 204;")
        self.note = f"nginx ({binary}) answering 204, 1 worker, access log off"

    def url(self, path: str = "/hook") -> str:
        return loopback_url(self.port, path)


def _distinct_free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that nothing listened on a moment ago (all held while chosen)."""
    held = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in held:
            s.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


class DelayedNginx(ChildProcess):
    """nginx answering 204 after ``delay_ms`` on ``count`` ports of 127.0.0.1 (one endpoint per port), with
    Debian's echo module (``echo_sleep``: a timer, no worker held). One worker process: the receiver of the
    slow shapes costs about what the fast one does per request, so the dispatcher, not the receiver, is what
    the figures measure. ``available()`` says whether the module is installed."""

    kind = "nginx-echo"

    @staticmethod
    def available() -> bool:
        return nginx_binary() is not None and ECHO_MODULE.exists()

    def __init__(self, workdir: Path, count: int, delay_ms: float) -> None:
        binary = nginx_binary()
        assert binary is not None and ECHO_MODULE.exists(), "check DelayedNginx.available() first"
        wait = f" echo_sleep {delay_ms / 1000:g};" if delay_ms > 0 else ""
        answer = f"echo_read_request_body;{wait} echo_status 204;"
        modules = f"load_module {ECHO_MODULE};\n"
        for attempt in range(3):  # the ports are free when chosen; another process may take one meanwhile
            self.ports = _distinct_free_ports(count)
            try:
                self.proc = _start_nginx(binary, workdir / f"nginx-{attempt}", self.ports, answer, modules)
                break
            except NotReady:
                if attempt == 2:
                    raise
        self.note = f"nginx ({binary}) with the echo module, {count} ports, 204 after {delay_ms:g} ms"


class PythonDelayedReceiver(ChildProcess):
    """bench/delayed_receiver.py (one asyncio process) on ``count`` ports the kernel picks (1,000 free ports
    chosen here would race other processes on a shared machine), answering 204 after ``delay_ms``."""

    kind = "python-delayed"

    def __init__(self, count: int, delay_ms: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "delayed_receiver.py"), "--count", str(count),
             "--delay-ms", str(delay_ms)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # once every port listens (empty if it exited first)
        self.ports = [int(port) for port in line.split(b",") if port.strip()]
        if len(self.ports) != count:
            self.close()
            raise RuntimeError(f"delayed_receiver.py did not start ({self.proc.returncode})")
        self.note = f"bench/delayed_receiver.py (Python asyncio), {count} ports, 204 after {delay_ms:g} ms"


def add_delayed_option(p: argparse.ArgumentParser) -> None:
    """``--delayed auto|nginx|python``: which receiver ``delayed_receiver`` starts."""
    _choice_of_receiver(p, "--delayed", "delayed receivers: nginx with its echo module (auto), or Python")


def delayed_receiver(
    choice: str, workdir: Path, count: int, delay_ms: float
) -> DelayedNginx | PythonDelayedReceiver:
    """``count`` endpoints answering after ``delay_ms``: nginx with the echo module when asked for or
    installed (auto); else bench/delayed_receiver.py."""
    if choice == "nginx" or (choice == "auto" and DelayedNginx.available()):
        if not DelayedNginx.available():
            raise SystemExit("--delayed nginx: nginx or its echo module (libnginx-mod-http-echo) is missing")
        return DelayedNginx(workdir, count, delay_ms)
    return PythonDelayedReceiver(count, delay_ms)


class PythonReceiver(ChildProcess):
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
