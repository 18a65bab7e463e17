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

from loopback import LOOPBACK, LoopbackListener, free_port, http_get, loopback_url, wait_port
from processes import ChildProcess
from report import BENCH


def add_receiver_option(p: argparse.ArgumentParser) -> None:
    """``--receiver auto|nginx|python``: which fast receiver ``fast_receiver`` starts."""
    p.add_argument(
        "--receiver",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="fast receiver: nginx answering 204 when installed (auto), or the Python one",
    )


def nginx_binary() -> str | None:
    """The nginx binary on PATH or in /usr/sbin; None when it is not installed."""
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


class Nginx(ChildProcess):
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
