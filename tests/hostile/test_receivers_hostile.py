"""Hostile receivers: loopback servers (threads on raw sockets) that accept a delivery and then never finish
answering. ``config.timeout`` bounds the whole attempt, so each one costs a delivery thread at most about the
timeout, through the in-process ``HttpClient``, the child-process ``ProcessClient``, the token flow, callbacks
and a real ``dispatch run``. Every receiver would go on for a minute; each test asserts a generous bound and
that the receiver's threads have stopped at the end. Nothing here leaves 127.0.0.1."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.egress import EgressPolicy
from dispatcher.errors import DeliveryError
from dispatcher.http import HttpClient
from dispatcher.outbound import OutboundRequest
from dispatcher.transport import ProcessClient
from reconciler.model import SecretRef, TokenAuth
from tests.conftest import wait_until
from tests.dispatcher.test_http import loopback_resolver, make_cert
from tests.e2e.harness import DispatchProcess, Receiver, event_line, run_cli, write_webhook
from tests.loopback import LoopbackListener

LOOPBACK_NETS = (ipaddress.ip_network("127.0.0.0/8"),)
#: How long every hostile receiver would keep a connection going if the client let it.
STALL_SECONDS = 60.0
#: The attempts' timeout, and the generous bound an attempt must end within.
TIMEOUT_SECONDS = 1.0
BOUND_SECONDS = 5.0

#: One hostile behaviour: given the accepted connection and a stop flag, misbehave until told to stop.
Behaviour = Callable[[socket.socket, threading.Event], None]


class HostileReceiver(LoopbackListener):
    """A TCP server on 127.0.0.1 that reads each request's head and then runs ``behave`` on the connection,
    one thread per connection. ``close()`` stops every thread and asserts they are gone."""

    def __init__(self, behave: Behaviour, tls: ssl.SSLContext | None = None) -> None:
        super().__init__("hostile-accept")
        self._behave = behave
        self._tls = tls
        self._threads: list[threading.Thread] = []
        self._thread.start()

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self.accepted

    def _take(self, conn: socket.socket) -> None:
        thread = threading.Thread(target=self._serve, args=(conn,), name="hostile-conn", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # ssl.SSLError is an OSError too
            if self._tls is not None:
                conn.settimeout(5.0)
                conn = self._tls.wrap_socket(conn, server_side=True)
        with conn, contextlib.suppress(OSError):
            conn.settimeout(0.2)
            head = b""
            while b"\r\n\r\n" not in head and not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                head += chunk
            self._behave(conn, self._stop)

    def _release(self) -> None:
        for thread in self._threads:
            thread.join(5)
        assert not self._thread.is_alive()
        assert not any(t.is_alive() for t in self._threads), "a hostile receiver thread did not stop"


def _trickle(conn: socket.socket, stop: threading.Event, data: bytes, interval: float) -> None:
    """Send ``data`` one byte every ``interval`` seconds (or until stopped / the client hangs up)."""
    for i in range(len(data)):
        if stop.wait(interval):
            return
        conn.sendall(data[i : i + 1])


def _repeat(
    conn: socket.socket, stop: threading.Event, piece: Callable[[int], bytes], interval: float
) -> None:
    """Send ``piece(n)`` every ``interval`` seconds for STALL_SECONDS (or until stopped / hung up)."""
    ends = time.monotonic() + STALL_SECONDS
    n = 0
    while time.monotonic() < ends and not stop.wait(interval):
        conn.sendall(piece(n))
        n += 1


def trickle_status_line(conn: socket.socket, stop: threading.Event) -> None:
    """The status line, one byte per 0.3 s: a reason phrase that goes on for a minute."""
    _trickle(conn, stop, b"HTTP/1.1 200 " + b"O" * int(STALL_SECONDS / 0.3), 0.3)


def continue_forever(conn: socket.socket, stop: threading.Event) -> None:
    """``100 Continue`` again and again, never the final answer."""
    _repeat(conn, stop, lambda n: b"HTTP/1.1 100 Continue\r\n\r\n", 0.2)


def headers_forever(conn: socket.socket, stop: threading.Event) -> None:
    """A status line, then one more header every 0.3 s, never the blank line."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    _repeat(conn, stop, lambda n: b"X-Pad-%d: y\r\n" % n, 0.3)


def trickle_body(conn: socket.socket, stop: threading.Event) -> None:
    """A complete head announcing a 100 kB body, then the body one byte per 0.3 s."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: text/plain\r\n\r\n")
    _trickle(conn, stop, b"b" * int(STALL_SECONDS / 0.3), 0.3)


def never_answer(conn: socket.socket, stop: threading.Event) -> None:
    """Accept, read the request, keep the connection open and say nothing."""
    stop.wait(STALL_SECONDS)


def huge_header_block(conn: socket.socket, stop: threading.Event) -> None:
    """A header block of megabytes (99 headers of 60 kB, each under http.client's line limit), sent at a
    steady 40 kB/s: every read gets data well within the timeout, the block takes minutes."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    block = b"".join(b"X-Big-%02d: %s\r\n" % (i, b"z" * 60000) for i in range(99)) + b"\r\n"
    _repeat(conn, stop, lambda n: block[n * 4096 : (n + 1) * 4096], 0.1)


BEHAVIOURS = [trickle_status_line, continue_forever, headers_forever, trickle_body, never_answer,
              huge_header_block]  # fmt: skip


def _assert_timed_out(error: str | None, elapsed: float) -> None:
    assert error is not None and error.startswith("timed out"), error
    assert "no complete answer within 1s" in error or "connecting" in error, error
    assert elapsed < BOUND_SECONDS, f"the attempt took {elapsed:.1f}s"


def _request(url: str) -> OutboundRequest:
    return OutboundRequest(url, b'{"a":1}', {"Content-Type": "application/json"}, TIMEOUT_SECONDS)


@pytest.fixture(scope="module")
def process_client() -> Iterator[ProcessClient]:
    with ProcessClient(LOOPBACK_NETS, processes=1, threads_per_process=4) as client:
        yield client


@pytest.mark.parametrize("behave", BEHAVIOURS, ids=lambda b: b.__name__)
def test_http_client_attempt_ends_at_the_timeout(behave: Behaviour) -> None:
    """Through HttpClient, an attempt against a receiver that never finishes answering fails as a timeout
    within about the timeout, whatever phase the receiver stalls in."""
    with HostileReceiver(behave) as hostile, HttpClient(EgressPolicy(LOOPBACK_NETS)) as client:
        started = time.monotonic()
        record = client.send(_request(hostile.url()))
        elapsed = time.monotonic() - started
    _assert_timed_out(record.error, elapsed)


@pytest.mark.parametrize("behave", BEHAVIOURS, ids=lambda b: b.__name__)
def test_process_client_attempt_ends_at_the_timeout(behave: Behaviour, process_client: ProcessClient) -> None:
    """Through a delivery child process, the same attempts fail as timeouts within about the timeout (not
    "no answer from the delivery process in time")."""
    with HostileReceiver(behave) as hostile:
        started = time.monotonic()
        record = process_client.send(_request(hostile.url()))
        elapsed = time.monotonic() - started
    _assert_timed_out(record.error, elapsed)


@pytest.mark.parametrize("behave", [continue_forever, huge_header_block], ids=lambda b: b.__name__)
def test_token_request_ends_at_the_timeout(behave: Behaviour, process_client: ProcessClient) -> None:
    """A token endpoint that never finishes answering fails the token request as a timeout within about
    the timeout, in process and in a child, naming the endpoint and not the password."""
    with HostileReceiver(behave) as hostile, HttpClient(EgressPolicy(LOOPBACK_NETS)) as client:
        auth = TokenAuth(url=hostile.url("/token"), username="oms", password=SecretRef("env", "PW"))
        for maker in (client, process_client):
            started = time.monotonic()
            with pytest.raises(DeliveryError) as failure:
                maker.fetch_token(auth, "pw-secret", TIMEOUT_SECONDS)
            elapsed = time.monotonic() - started
            message = str(failure.value)
            assert message.startswith(f"token endpoint {auth.url}: timed out"), message
            assert "pw-secret" not in message
            assert elapsed < BOUND_SECONDS, f"the token request took {elapsed:.1f}s"


@pytest.mark.parametrize("behave", [trickle_status_line, headers_forever], ids=lambda b: b.__name__)
def test_callback_post_ends_at_the_timeout(behave: Behaviour, process_client: ProcessClient) -> None:
    """A callback URL that never finishes answering fails the callback POST as a timeout within about the
    timeout, in process and in a child."""
    with HostileReceiver(behave) as hostile, HttpClient(EgressPolicy(LOOPBACK_NETS)) as client:
        for maker in (client, process_client):
            started = time.monotonic()
            record = maker.post_json(hostile.url("/outcomes"), {"outcome": "dead"}, TIMEOUT_SECONDS)
            _assert_timed_out(record.error, time.monotonic() - started)


@pytest.mark.parametrize("behave", [trickle_status_line, continue_forever], ids=lambda b: b.__name__)
def test_tls_attempt_ends_at_the_timeout(behave: Behaviour, tmp_path: Path) -> None:
    """Over TLS (a real handshake with a certificate for the URL's hostname), a receiver that stalls after
    the handshake fails the attempt as a timeout within about the timeout."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = make_cert(tmp_path, "hooks.example.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with (
        HostileReceiver(behave, tls=context) as hostile,
        HttpClient(EgressPolicy(LOOPBACK_NETS), resolver=loopback_resolver, ca_bundle=str(cert)) as client,
    ):
        url = f"https://hooks.example.test:{hostile.port}/hook"
        started = time.monotonic()
        record = client.send(_request(url))
        elapsed = time.monotonic() - started
    _assert_timed_out(record.error, elapsed)


def test_an_answer_whose_excerpt_arrived_is_kept_when_the_rest_trickles() -> None:
    """A receiver that sends its status, headers and the first 4 KiB of the body at once and then trickles
    the rest gives a successful attempt with the excerpt, ended at the deadline (the rest is not waited for,
    the connection is not reused)."""

    def excerpt_then_trickle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"e" * 5000)
        _trickle(conn, stop, b"t" * int(STALL_SECONDS / 0.3), 0.3)

    with HostileReceiver(excerpt_then_trickle) as hostile, HttpClient(EgressPolicy(LOOPBACK_NETS)) as client:
        started = time.monotonic()
        first = client.send(_request(hostile.url()))
        elapsed = time.monotonic() - started
        second = client.send(_request(hostile.url()))
        connections = hostile.connections
    assert (first.status_code, first.error, first.response_excerpt) == (200, None, "e" * 4096)
    assert elapsed < BOUND_SECONDS, f"the attempt took {elapsed:.1f}s"
    assert second.status_code == 200 and connections == 2


def test_a_dns_lookup_that_never_returns_ends_at_the_timeout() -> None:
    """A target whose name lookup hangs fails the attempt as a timeout within about the timeout (the lookup
    is left to finish on its own thread), and nothing is connected to."""
    release = threading.Event()
    looked_up = threading.Event()

    def hanging(host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
        looked_up.set()
        release.wait(STALL_SECONDS)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    def forbidden_connect(*args: Any) -> socket.socket:
        raise AssertionError("connected although the lookup had not returned in time")

    try:
        with HttpClient(EgressPolicy(LOOPBACK_NETS), resolver=hanging, connect=forbidden_connect) as client:
            started = time.monotonic()
            record = client.send(_request("http://slow-dns.example.test/hook"))
            elapsed = time.monotonic() - started
    finally:
        release.set()
    assert looked_up.is_set()
    assert record.error == "timed out after 1s resolving slow-dns.example.test"
    assert elapsed < BOUND_SECONDS, f"the attempt took {elapsed:.1f}s"


def test_deadline_does_not_outlive_its_attempt(process_client: ProcessClient) -> None:
    """After an attempt was cut off at its deadline, the same child keeps delivering to a well-behaved
    receiver over a kept-alive connection for longer than that timeout (no deadline leaks into later
    attempts or reused connections)."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        answers = 1  # the first request's head was read by the server
        while not stop.is_set():
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n" * answers)
            answers = 0
            while not answers:  # the next request on the same connection
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    if stop.is_set():
                        return
                    continue
                if not data:
                    return
                answers = data.count(b"POST ")

    with HostileReceiver(continue_forever) as hostile:
        assert process_client.send(_request(hostile.url())).error is not None
    with HostileReceiver(answer) as good:
        started = time.monotonic()
        records = []
        while time.monotonic() - started < 2 * TIMEOUT_SECONDS:
            records.append(process_client.send(_request(good.url())))
        assert {(r.status_code, r.error) for r in records} == {(204, None)}
        assert good.connections == 1


# -- a real dispatcher -------------------------------------------------------------------------------------


def test_stalling_receivers_do_not_starve_a_healthy_webhook(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A real dispatcher with 8 webhooks pointing at receivers that stall in the header phase and one healthy
    webhook: every healthy delivery arrives, and the stalled ones record timed-out attempts, never
    "no answer from the delivery process in time"."""
    behaviours = [trickle_status_line, continue_forever, headers_forever, huge_header_block] * 2
    hostiles = [HostileReceiver(behave) for behave in behaviours]
    try:
        retry = {"choice": "fixed", "kwargs": {"seconds": 1}, "max_attempts": 2}
        for i, hostile in enumerate(hostiles):
            write_webhook(config_dir, f"stalled-{i}", hostile.url(), "package.*",
                          config={"timeout": 1}, retry_countdown_config=retry)  # fmt: skip
        write_webhook(config_dir, "healthy", receiver.url("/healthy"), "package.*", config={"timeout": 1})
        proc = DispatchProcess(config_dir, tmp_path / "state")
        processes.append(proc)
        acks = proc.publish([event_line("package.created", payload={"n": n}) for n in range(20)])
        assert all(a["ok"] and a["deliveries"] == 9 for a in acks)
        got = receiver.wait_count("/healthy", 20, timeout=30)
        assert sorted(r.json()["payload"]["n"] for r in got) == list(range(20))
        state = str(tmp_path / "state")

        def attempted() -> list[dict[str, object]]:
            out = run_cli("deliveries", "list", "--state", state, "--limit", "1000", "--format", "json")
            rows = json.loads(out.stdout)
            return [r for r in rows if str(r["webhook"]).startswith("stalled-") and r["last_error"]]

        wait_until(lambda: len({r["webhook"] for r in attempted()}) == 8, timeout=30)
        errors = {str(r["last_error"]) for r in attempted()}
        assert all(e.startswith("timed out: no complete answer within 1s") for e in errors), errors
        assert "no answer from the delivery process" not in proc.logs()
    finally:
        for hostile in hostiles:
            hostile.close()
