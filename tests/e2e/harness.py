"""End-to-end harness: a real HTTP receiver on loopback and a real ``dispatch run`` process.

Nothing here talks to anything but 127.0.0.1 and Unix sockets in the test's own temporary directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import wait_until
from tests.loopback import NotReady, dispatch_command, stop_process, wait_socket

__all__ = [
    "DispatchProcess",
    "Received",
    "Receiver",
    "dispatch_command",
    "event_line",
    "run_cli",
    "start_receiver",
    "wait_until",  # re-exported: tests import it from here or from tests.conftest (the one definition)
    "webhook_doc",
    "write_webhook",
]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A loopback HTTP server that records every POST and answers from a per-path script of status codes."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    delay_seconds: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def respond(self, path: str, *codes: int) -> None:
        """Answer POSTs to ``path`` with these codes in turn; the last one repeats."""
        self.scripts[path] = list(codes)

    def next_status(self, path: str) -> int:
        with self.lock:
            codes = self.scripts.get(path)
            if not codes:
                return 200
            return codes.pop(0) if len(codes) > 1 else codes[0]

    def record(self, item: Received) -> None:
        with self.arrived:
            self.requests.append(item)
            self.arrived.notify_all()

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not predicate(list(self.requests)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"receiver: condition not met within {timeout}s ({len(self.requests)} seen)"
                    )
                self.arrived.wait(remaining)
            return list(self.requests)

    def wait_count(self, path: str, n: int, timeout: float = 15.0) -> list[Received]:
        self.wait_for(lambda rs: sum(1 for r in rs if r.path == path) >= n, timeout)
        return self.on(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver() -> Receiver:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            rec = holder[0]
            delay = rec.delay_seconds.get(self.path)
            if delay:
                time.sleep(delay)
            status = rec.next_status(self.path)
            rec.record(
                Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
            )
            payload = b'{"received":true}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(server)
    holder.append(receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


def webhook_doc(
    name: str, url: str, event_type: str | list[str] = "package.created", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"target_url": url, "event_type": event_type}
    body.update(spec)
    return {"apiVersion": "webhooks/v1", "kind": "Webhook", "metadata": {"name": name}, "spec": body}


def write_webhook(
    directory: Path, name: str, url: str, event_type: str | list[str] = "package.created", **spec: Any
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(webhook_doc(name, url, event_type, **spec), sort_keys=False))
    os.replace(tmp, path)  # atomic, like an editor's save or a git checkout
    return path


def event_line(event_type: str = "package.created", uuid: str | None = None, **extra: Any) -> bytes:
    event: dict[str, Any] = {"type": event_type}
    if uuid:
        event["uuid"] = uuid
    doc: dict[str, Any] = {"event": event, "payload": extra.pop("payload", {"id": 73})}
    doc.update(extra)
    return json.dumps(doc).encode() + b"\n"


class DispatchProcess:
    """A running ``dispatch run --socket`` (or ``--stdin``) process."""

    def __init__(
        self,
        config: Path,
        state: Path,
        *,
        socket_path: Path | None = None,
        allow_loopback: bool = True,
        extra_args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
    ) -> None:
        self.socket_path = socket_path or (state.parent / f"{state.name}.sock")
        self.log_path = state.parent / f"{state.name}.log"
        args = [*dispatch_command(), "run", "--config", str(config), "--state", str(state)]
        args += ["--stdin"] if stdin else ["--socket", str(self.socket_path)]
        if allow_loopback:
            args += ["--allow-cidr", "127.0.0.0/8"]
        args += list(extra_args)
        full_env = {**os.environ, **(env or {})}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin else self._log,
            stderr=self._log,
            env=full_env,
        )
        if not stdin:
            self._wait_socket()

    def _wait_socket(self, timeout: float = 15.0) -> None:
        try:
            wait_socket(self.socket_path, timeout, self.proc)
        except NotReady as exc:
            raise AssertionError(f"dispatch: {exc}:\n{self.logs()}") from None

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def publish(self, lines: Iterable[bytes], timeout: float = 20.0) -> list[dict[str, Any]]:
        """Send lines over one connection, return the parsed acks (one per line)."""
        data = b"".join(lines)
        expected = data.count(b"\n")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket_path))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while buf.count(b"\n") < expected:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return [json.loads(x) for x in buf.splitlines()]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL: no cleanup at all
        self.proc.wait(10)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> int:
        stop_process(self.proc, timeout)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def run_cli(
    *args: str, timeout: float = 30.0, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dispatch_command(), *args],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
