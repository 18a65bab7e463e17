"""``--metrics HOST:PORT``: ``/metrics`` (Prometheus text), ``/healthz`` and ``/status`` (JSON).

``/healthz`` answers 200 ``ok`` while healthy, else 503 with the reason (which internal thread died, and
how: see ``dispatcher.supervise``), so a probe or an operator sees why before the process exits.

At most ``STATUS_MAX_CONNECTIONS`` connections are served at once (``dispatcher.caps``): one more is
answered ``503 Service Unavailable`` at once, on the accepting thread, and closed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from dispatcher.caps import STATUS_MAX_CONNECTIONS, ConnectionCap, Refuser
from dispatcher.live import LiveConfig
from dispatcher.logs import fields, get_logger
from dispatcher.metrics import Metrics
from dispatcher.store.base import Store
from dispatcher.store.open import describe as describe_store
from dispatcher.supervise import Spawn, describe, start_thread


def _public_endpoint(url: str) -> str:
    """scheme://host[:port] only: paths and queries can carry tokens, so /status never shows them."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def build_status(live: LiveConfig, store: Store, now: float) -> dict[str, Any]:
    """The /status document: revisions, last reload, webhooks, queue depth, oldest pending age."""
    s = live.status
    snapshot = live.current()
    oldest = store.oldest_open_created_at()
    return {
        "active_revision": s.active_revision,
        "active_git_commit": s.active_git_commit,
        "attempted_revision": s.attempted_revision,
        "last_reload": {
            "successful": s.last_reload_ok,
            "at": s.last_reload_at,
            "error": s.last_error,
        },
        "last_reload_success_at": s.last_success_at,
        "webhooks": [
            {
                "name": h.name,
                "status": "active" if h.active else "inactive",
                "event_types": list(h.event_types),
                "endpoint": _public_endpoint(h.target_url),
                "source": f"{h.source.file}:{h.source.line}",
                "secrets_resolved": all(r in snapshot.secrets for r in h.secret_refs()),
            }
            for h in sorted(snapshot.table.webhooks.values(), key=lambda h: h.name)
        ],
        "queue": {status.value: n for status, n in store.counts().items()},
        "oldest_pending_age_seconds": None if oldest is None else max(0.0, now - oldest),
        "store": describe_store(store, now),
    }


#: How long the status server waits for each read of a request before it closes the connection.
IDLE_TIMEOUT_SECONDS = 5.0

log = get_logger("status")

_REFUSED_BODY = b"too many connections\n"
_REFUSED = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY)
)


class _CappedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``cap.limit`` at once; past that, 503 without a thread."""

    daemon_threads = True
    # socketserver's default listen backlog is 5: past it the kernel drops handshakes and the clients retry
    # after a second or more, so a burst of probes (or connections held to the cap) would queue behind it.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], cap: ConnectionCap):
        self.cap = cap
        self.refuser = Refuser()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.cap.try_acquire():
            self.refuser.refuse(request, _REFUSED)  # on the accepting thread: never blocks
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.cap.release()  # no thread started: nothing else will release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.cap.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver prints a traceback to stderr for any error in a request. A client that hung up before
        its answer was written (a probe that timed out) is not the dispatcher's error: nothing is logged. Any
        other error is one log line, by place (``describe``), never by message."""
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, ConnectionError):
            return
        log.warning("status.request_failed", extra=fields(error=describe(exc)))


class StatusServer:
    """A small HTTP server in a thread, at most ``max_connections`` at once. ``close()`` stops it."""

    def __init__(
        self,
        address: tuple[str, int],
        metrics: Metrics,
        status: Callable[[], dict[str, Any]],
        problem: Callable[[], str | None],
        *,
        spawn: Spawn = start_thread,
        max_connections: int = STATUS_MAX_CONNECTIONS,
        idle_timeout_seconds: float = IDLE_TIMEOUT_SECONDS,
    ) -> None:
        """``problem``: None while healthy, else why not (shown by /healthz)."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            # Each read of a request: a client that stops sending must not keep a thread and a descriptor.
            timeout = idle_timeout_seconds

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, outer.metrics.render())
                elif path == "/healthz":
                    problem = outer.problem()
                    if problem is None:
                        self._send(200, "text/plain", b"ok\n")
                    else:
                        self._send(503, "text/plain", f"unhealthy: {problem}\n".encode())
                elif path == "/status":
                    body = json.dumps(outer.status(), indent=2).encode() + b"\n"
                    self._send(200, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the log

        self.metrics = metrics
        self.status = status
        self.problem = problem
        self._spawn = spawn
        refused = metrics.connections_refused.labels(listener="status").inc
        self._server = _CappedServer(address, Handler, ConnectionCap("status", max_connections, refused))
        self.address = self._server.server_address

    def start(self) -> None:
        self._spawn("dispatch-status", self._server.serve_forever)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.refuser.close()


def status_provider(
    live: LiveConfig, store: Store, clock: Callable[[], float] = time.time
) -> Callable[[], dict[str, Any]]:
    return lambda: build_status(live, store, clock())
