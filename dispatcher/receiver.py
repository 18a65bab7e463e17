"""``dispatch receive``: a small receiver for trying webhooks out (SPEC section 3).

It prints one line per POST with both signature verdicts and answers with a scripted status sequence, so an
operator can watch signing, retries (``--respond 500,500,200``) and 410 handling without a real endpoint.

Verdicts per scheme: ``ok``, ``BAD`` (present but wrong, or a Standard Webhooks timestamp outside the 5-minute
window), ``absent`` (header missing) or ``unchecked`` (present, but no ``--secret`` to check it with).

``--strict`` (needs ``--secret``): a delivery fails when a signature is BAD or when it carries neither
signature. A failing delivery is answered 401 and stops the receiver; ``run_receiver`` then returns 1.
"""

from __future__ import annotations

import contextlib
import email.message
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal, TextIO

from dispatcher.exitcodes import ExitCode
from dispatcher.signing import verify_standard, verify_whisperer

Verdict = Literal["ok", "BAD", "absent", "unchecked"]

#: Bigger bodies are refused with 413 (webhooks are small; Standard Webhooks recommends under 20 kB).
MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_STATUS = 204


@dataclass(frozen=True)
class ReceivedDelivery:
    """One POST as the receiver saw it."""

    time: float
    path: str
    event: str | None
    webhook_id: str | None
    size: int
    whisperer: Verdict
    standard: Verdict
    status: int

    @property
    def failed(self) -> bool:
        """Whether ``--strict`` rejects it: a bad signature, or no signature at all."""
        verdicts = (self.whisperer, self.standard)
        return "BAD" in verdicts or verdicts == ("absent", "absent")


def check_signatures(
    secret: str | None, headers: Mapping[str, str], body: bytes, now: float
) -> tuple[Verdict, Verdict]:
    """The (whisperer, standard) verdicts for one request. ``headers`` must be case-insensitive."""
    whisperer_header = headers.get("X-Whisperer-Signature")
    standard_header = headers.get("webhook-signature")
    whisperer: Verdict
    standard: Verdict
    if whisperer_header is None:
        whisperer = "absent"
    elif secret is None:
        whisperer = "unchecked"
    else:
        whisperer = "ok" if verify_whisperer(secret, body, whisperer_header) else "BAD"
    if standard_header is None:
        standard = "absent"
    elif secret is None:
        standard = "unchecked"
    else:
        valid = verify_standard(
            secret,
            headers.get("webhook-id"),
            headers.get("webhook-timestamp"),
            body,
            standard_header,
            now=now,
        )
        standard = "ok" if valid else "BAD"
    return whisperer, standard


def format_line(delivery: ReceivedDelivery) -> str:
    """The human-readable line for one delivery."""
    return (
        f"{_iso(delivery.time)} POST {delivery.path} event={delivery.event or '-'} "
        f"id={delivery.webhook_id or '-'} {delivery.size} bytes "
        f"whisperer: {delivery.whisperer} standard: {delivery.standard} -> {delivery.status}"
    )


def format_json(delivery: ReceivedDelivery) -> str:
    """The JSON line for one delivery (``--json``)."""
    record = asdict(delivery)
    record["time"] = _iso(delivery.time)
    record["bytes"] = record.pop("size")
    return json.dumps(record, separators=(",", ":"))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Receiver:
    """An HTTP server on ``host:port`` (port 0 = any free port) that logs and answers webhook deliveries.

    ``responses`` are the statuses answered in turn (the last one repeats; default 204). ``max_count`` stops
    the server after that many deliveries. ``serve_forever`` blocks until then or until ``shutdown``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        secret: str | None = None,
        *,
        strict: bool = False,
        responses: Sequence[int] | None = None,
        out: TextIO | None = None,
        json_lines: bool = False,
        max_count: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if strict and secret is None:
            raise ValueError("--strict needs --secret: without it no signature can be checked")
        if responses is not None and any(not 100 <= code <= 599 for code in responses):
            raise ValueError(f"status codes must be between 100 and 599, got {list(responses)!r}")
        if max_count is not None and max_count < 1:
            raise ValueError(f"max_count must be at least 1, got {max_count!r}")
        self.secret = secret
        self.strict = strict
        self.responses = tuple(responses or (DEFAULT_STATUS,))
        self.out = out if out is not None else sys.stdout
        self.json_lines = json_lines
        self.max_count = max_count
        self.clock = clock
        self.deliveries: list[ReceivedDelivery] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._server = _Server((host, port), _Handler, self)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    @property
    def failures(self) -> int:
        """Deliveries rejected by ``--strict``."""
        with self._lock:
            return sum(1 for d in self.deliveries if d.failed) if self.strict else 0

    def handle(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, bool]:
        """Record and print one delivery; returns the status to answer and whether to stop afterwards."""
        now = self.clock()
        whisperer, standard = check_signatures(self.secret, headers, body, now)
        with self._lock:
            scripted = self.responses[min(len(self.deliveries), len(self.responses) - 1)]
            delivery = ReceivedDelivery(
                now,
                path,
                headers.get("X-Whisperer-Event"),
                headers.get("webhook-id"),
                len(body),
                whisperer,
                standard,
                scripted,
            )
            if self.strict and delivery.failed:
                delivery = replace(delivery, status=401)
            self.deliveries.append(delivery)
            self._write(format_json(delivery) if self.json_lines else format_line(delivery))
            stop = (self.strict and delivery.failed) or (
                self.max_count is not None and len(self.deliveries) >= self.max_count
            )
            if stop and not self._stopping:
                self._stopping = True
                return delivery.status, True
        return delivery.status, False

    def _write(self, line: str) -> None:
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):  # `| head`, or a closed stream: the server keeps answering
            pass

    def stop_soon(self) -> None:
        """Ask ``serve_forever`` to return, from any thread (including a request handler)."""
        # shutdown() waits for the serve loop; from a handler thread that must not block the answer.
        threading.Thread(target=self._server.shutdown, name="receiver-stop", daemon=True).start()

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.1)

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (running in another thread) and wait for it to return."""
        self._server.shutdown()

    def close(self) -> None:
        """Release the listening socket."""
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], receiver: Receiver
    ) -> None:
        self.receiver = receiver
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as real receivers do: the dispatcher's connection reuse is then visible in tests and demos.
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._answer(411)
            return
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self._answer(413, close=True)
            return
        body = self.rfile.read(length)
        status, stop = self.server.receiver.handle(self.path, _HeaderView(self.headers), body)
        self._answer(status)
        if stop:
            self.server.receiver.stop_soon()

    def _answer(self, status: int, *, close: bool = False) -> None:
        self.send_response(status)
        if status not in (204, 304) and not 100 <= status < 200:
            self.send_header("Content-Length", "0")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the receiver prints its own line per delivery


class _HeaderView(Mapping[str, str]):
    """The request's headers as a read-only, case-insensitive mapping (first value of each name)."""

    def __init__(self, message: email.message.Message) -> None:
        self._message = message

    def __getitem__(self, name: str) -> str:
        value = self._message.get(name)
        if value is None:
            raise KeyError(name)
        return str(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._message.keys())

    def __len__(self) -> int:
        return len(self._message.keys())


def run_receiver(
    *,
    port: int,
    host: str = "127.0.0.1",
    secret: str | None = None,
    strict: bool = False,
    responses: Sequence[int] | None = None,
    max_count: int | None = None,
    json_lines: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Serve until interrupted, ``max_count`` deliveries, or a strict failure. Returns the exit code: OK;
    FAILURE when ``strict`` rejected a delivery; USAGE for bad arguments or a port that cannot be bound."""
    err = err if err is not None else sys.stderr
    try:
        receiver = Receiver(
            host,
            port,
            secret,
            strict=strict,
            responses=responses,
            out=out,
            json_lines=json_lines,
            max_count=max_count,
        )
    except ValueError as exc:
        err.write(f"dispatch receive: {exc}\n")
        return ExitCode.USAGE
    except OSError as exc:
        err.write(f"dispatch receive: cannot listen on {host}:{port}: {exc.strerror or exc}\n")
        return ExitCode.USAGE
    with receiver:
        # On stderr, so that stdout holds delivery lines only (--json output stays parseable).
        err.write(f"listening on {receiver.url}\n")
        err.flush()
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop it
            receiver.serve_forever()
        return ExitCode.FAILURE if receiver.failures else ExitCode.OK
