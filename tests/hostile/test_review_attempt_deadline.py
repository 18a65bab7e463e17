"""Review of the merged hardening: one deadline per attempt, token flow included.

With ``config.auth.type: token`` an attempt is two exchanges: the token request, then the delivery POST.
``config.timeout`` bounds the whole attempt, so a token endpoint that takes most of the timeout leaves the
POST only what remains, and SIGTERM still exits within the longest timeout plus 2 s. Real ``dispatch run``
processes and receivers on 127.0.0.1 only.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from pathlib import Path

from tests.conftest import wait_until
from tests.e2e.harness import DispatchProcess, event_line, write_webhook
from tests.hostile.test_receivers_hostile import HostileReceiver, never_answer

TIMEOUT_SECONDS = 4.0
#: The token endpoint's answer is complete after about this long: within the timeout, but most of it.
TOKEN_SECONDS = 3.2
TOKEN_BODY = b'{"key":"tok-123"}'


def slow_token(conn: socket.socket, stop: threading.Event) -> None:
    """A valid token answer whose body arrives one byte at a time, complete after about TOKEN_SECONDS."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
        TOKEN_BODY
    )
    conn.sendall(head)
    interval = TOKEN_SECONDS / len(TOKEN_BODY)
    for i in range(len(TOKEN_BODY)):
        if stop.wait(interval):
            return
        conn.sendall(TOKEN_BODY[i : i + 1])


def test_sigterm_during_a_slow_token_request_exits_within_the_timeout_plus_two_seconds(
    tmp_path: Path,
) -> None:
    """A token endpoint that answers just inside the timeout, then a target that never answers: the attempt
    as a whole ends at the timeout, so SIGTERM sent as the token request starts exits 0 within the
    timeout plus 2 s (not two timeouts)."""
    config = tmp_path / "webhooks.d"
    with HostileReceiver(slow_token) as token, HostileReceiver(never_answer) as target:
        auth = {"type": "token", "url": token.url("/token"), "username": "oms",
                "password": {"env": "WEBHOOK_TOKEN_PASS"}}  # fmt: skip
        write_webhook(config, "tokened", target.url(), config={"timeout": TIMEOUT_SECONDS, "auth": auth})
        proc = DispatchProcess(config, tmp_path / "state", env={"WEBHOOK_TOKEN_PASS": "pw-secret"})
        try:
            assert proc.publish([event_line()])[0]["ok"] is True
            wait_until(lambda: token.connections > 0)
            proc.signal(signal.SIGTERM)
            try:
                code = proc.proc.wait(TIMEOUT_SECONDS + 2.0)
            except subprocess.TimeoutExpired:
                code = None
            assert code == 0, f"dispatch did not exit 0 within the timeout + 2 s:\n{proc.logs()}"
        finally:
            proc.stop()
