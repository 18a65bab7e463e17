"""What the benchmarks feed the dispatcher: webhook files pointing at loopback, the OMS's NDJSON events, and
publishing them down one Unix-socket connection as fast as the acknowledgements come back."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopback import LOOPBACK

SECRET_ENV = "WEBHOOK_BENCH_SECRET"
SECRET_VALUE = "bench-signing-secret-not-a-real-one"


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
