"""Review of the merged hardening: the ``--metrics`` port against a client that never finishes a request.

Every connection to ``/metrics``, ``/healthz`` and ``/status`` had a thread and a descriptor of its own with
no time limit: a neighbour that opens connections and sends half a request line holds them for as long as
it likes, until the process runs out of descriptors (which the socket, the store and the delivery processes
need too). An idle connection is now closed after a few seconds. Real ``dispatch run``, 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from tests.e2e.harness import DispatchProcess, start_receiver, write_webhook
from tests.loopback import free_port

#: Longer than the server's idle limit, so a connection still open at the end was never going to close.
CLIENT_WAIT_SECONDS = 20.0


def test_a_half_sent_request_on_the_metrics_port_is_closed_by_the_dispatcher(tmp_path: Path) -> None:
    """A client that sends part of a request line and then nothing has its connection closed by the
    dispatcher, and /healthz still answers."""
    receiver = start_receiver()
    config = tmp_path / "webhooks.d"
    write_webhook(config, "hook", receiver.url("/hook"))
    port = free_port()
    proc = DispatchProcess(config, tmp_path / "state", extra_args=["--metrics", f"127.0.0.1:{port}"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_WAIT_SECONDS) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x")
            try:
                closed = slow.recv(1024) == b""
            except TimeoutError:
                closed = False
            assert closed, "the dispatcher kept a half-sent request's connection open"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        proc.stop()
        receiver.close()
