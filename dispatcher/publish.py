"""``dispatch publish``: the OMS side of the socket. Pipelines lines out while reading acks back."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dispatcher.errors import DispatcherError

_CHUNK = 1 << 16


@dataclass(frozen=True)
class PublishResult:
    sent: int
    accepted: int
    duplicates: int
    rejected: int

    @property
    def missing(self) -> int:
        """Lines sent that got no acknowledgement (the dispatcher stopped or the connection broke)."""
        return self.sent - self.accepted - self.duplicates - self.rejected


def connect(path: Path | str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise DispatcherError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
    return sock


def publish(path: Path | str, source: BinaryIO, out: BinaryIO) -> PublishResult:
    """Send every line of ``source``; copy each acknowledgement to ``out`` as it arrives."""
    sock = connect(path)
    sent = 0
    send_error: list[BaseException] = []

    def sender() -> None:
        nonlocal sent
        try:
            pending = b""
            while chunk := source.read(_CHUNK):
                data = pending + chunk
                cut = data.rfind(b"\n") + 1
                pending = data[cut:]
                if cut:
                    sent += data[:cut].count(b"\n")
                    sock.sendall(data[:cut])
            if pending.strip():
                sent += 1
                sock.sendall(pending + b"\n")
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            send_error.append(exc)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    accepted = duplicates = rejected = 0
    buffer = b""
    try:
        while True:
            try:
                data = sock.recv(_CHUNK)
            except ConnectionResetError:  # closed with our lines unread (e.g. refused: too many clients)
                break
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                out.write(line + b"\n")
                try:
                    ack = json.loads(line)
                except ValueError:
                    rejected += 1
                    continue
                if not ack.get("ok"):
                    rejected += 1
                elif ack.get("duplicate"):
                    duplicates += 1
                else:
                    accepted += 1
            out.flush()
    finally:
        thread.join()
        sock.close()
    if send_error and not (accepted + duplicates + rejected):
        raise DispatcherError(f"sending failed: {send_error[0]}")
    return PublishResult(sent, accepted, duplicates, rejected)
