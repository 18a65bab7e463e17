"""``dispatch receive``: signature verdicts (pure) and a real receiver on 127.0.0.1 in a thread."""

from __future__ import annotations

import base64
import http.client
import io
import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.egress import EgressPolicy
from dispatcher.http import HttpClient
from dispatcher.outbound import OutboundRequest
from dispatcher.receiver import Receiver, check_signatures, run_receiver
from dispatcher.signing import delivery_headers
from tests.conftest import wait_until

BODY = b'{"event":{"type":"package.created","uuid":"c9591f0d1c1d4da58ade880921bd7e93"},"payload":{"id":73}}'
MSG_ID = "c9591f0d1c1d4da58ade880921bd7e93"
NOW = 1_700_000_000


class Headers(dict[str, str]):
    """A case-insensitive header mapping, like the one the server hands to check_signatures."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__({k.lower(): v for k, v in values.items()})

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


def signed(secret: str | None, body: bytes = BODY, timestamp: int = NOW) -> dict[str, str]:
    return delivery_headers(
        event_type="package.created", msg_id=MSG_ID, timestamp=timestamp, body=body, secret=secret
    )


def test_both_signatures_verify_with_the_right_secret() -> None:
    """Headers we sign verify as ok/ok with the same secret."""
    assert check_signatures("k", Headers(signed("k")), BODY, NOW) == ("ok", "ok")


def test_whsec_secret_verifies_both_schemes() -> None:
    """A whsec_ secret verifies both the whisperer and the Standard Webhooks signature."""
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    assert check_signatures(secret, Headers(signed(secret)), BODY, NOW) == ("ok", "ok")


def test_wrong_secret_or_tampered_body_is_bad() -> None:
    """A different secret or a changed body gives BAD for both schemes."""
    assert check_signatures("other", Headers(signed("k")), BODY, NOW) == ("BAD", "BAD")
    assert check_signatures("k", Headers(signed("k")), BODY + b" ", NOW) == ("BAD", "BAD")


def test_stale_timestamp_is_bad_for_the_standard_scheme_only() -> None:
    """A Standard Webhooks timestamp outside 5 minutes is BAD; the whisperer scheme has no timestamp."""
    assert check_signatures("k", Headers(signed("k")), BODY, NOW + 301) == ("ok", "BAD")


def test_missing_signatures_are_absent() -> None:
    """Unsigned deliveries show absent for both schemes."""
    assert check_signatures("k", Headers(signed(None)), BODY, NOW) == ("absent", "absent")


def test_without_a_secret_present_signatures_are_unchecked() -> None:
    """Without --secret, signatures that are present cannot be checked."""
    assert check_signatures(None, Headers(signed("k")), BODY, NOW) == ("unchecked", "unchecked")


# -- a real receiver on loopback --------------------------------------------------------------------------


@pytest.fixture
def make_receiver() -> Iterator[Any]:
    started: list[tuple[Receiver, threading.Thread]] = []

    def make(**kwargs: Any) -> Receiver:
        kwargs.setdefault("out", io.StringIO())
        receiver = Receiver("127.0.0.1", 0, kwargs.pop("secret", None), **kwargs)
        thread = threading.Thread(target=receiver.serve_forever, daemon=True)
        thread.start()
        started.append((receiver, thread))
        return receiver

    yield make
    for receiver, thread in started:
        if thread.is_alive():
            receiver.shutdown()
        thread.join(5)
        receiver.close()


def post(receiver: Receiver, headers: dict[str, str], body: bytes = BODY, path: str = "/hook") -> int:
    host, port = receiver.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_receiver_prints_one_line_per_delivery_with_verdicts(make_receiver: Any) -> None:
    """Each POST is printed with path, event, id, size and both verdicts, and answered 204 by default."""
    out = io.StringIO()
    receiver = make_receiver(secret="k", out=out)
    status = post(receiver, signed("k", timestamp=int(time.time())))
    assert status == 204
    (line,) = out.getvalue().splitlines()
    assert "POST /hook" in line
    assert "event=package.created" in line
    assert f"id={MSG_ID}" in line
    assert f"{len(BODY)} bytes" in line
    assert "whisperer: ok" in line and "standard: ok" in line
    assert line.endswith("-> 204")


def test_receiver_answers_the_scripted_statuses_then_repeats_the_last(make_receiver: Any) -> None:
    """responses [500, 500, 200] are answered in turn, and the last one repeats."""
    receiver = make_receiver(responses=[500, 500, 200])
    statuses = [post(receiver, signed(None)) for _ in range(5)]
    assert statuses == [500, 500, 200, 200, 200]


def test_json_lines_output(make_receiver: Any) -> None:
    """With json_lines each delivery is one JSON object."""
    out = io.StringIO()
    receiver = make_receiver(secret="k", out=out, json_lines=True, responses=[410])
    post(receiver, signed("wrong", timestamp=int(time.time())), path="/x?y=1")
    record = json.loads(out.getvalue())
    assert record["path"] == "/x?y=1"
    assert record["event"] == "package.created"
    assert record["webhook_id"] == MSG_ID
    assert record["bytes"] == len(BODY)
    assert record["whisperer"] == "BAD" and record["standard"] == "BAD"
    assert record["status"] == 410
    assert record["time"].endswith("Z")


def test_strict_bad_signature_answers_401_and_stops(make_receiver: Any) -> None:
    """In strict mode a bad signature is answered 401, counted as a failure, and stops the server."""
    receiver = make_receiver(secret="k", strict=True)
    assert post(receiver, signed("wrong", timestamp=int(time.time()))) == 401
    assert receiver.failures == 1
    wait_until(lambda: _stopped(receiver), timeout=5)


def test_strict_unsigned_delivery_fails(make_receiver: Any) -> None:
    """In strict mode a delivery with neither signature is rejected too."""
    receiver = make_receiver(secret="k", strict=True)
    assert post(receiver, signed(None)) == 401
    assert receiver.failures == 1


def test_strict_good_signature_is_accepted(make_receiver: Any) -> None:
    """In strict mode a correctly signed delivery gets the scripted status and no failure."""
    receiver = make_receiver(secret="k", strict=True, responses=[202])
    assert post(receiver, signed("k", timestamp=int(time.time()))) == 202
    assert receiver.failures == 0


def _stopped(receiver: Receiver) -> bool:
    """Whether the server has stopped accepting: a new request is not answered."""
    host, port = receiver.address
    try:
        conn = http.client.HTTPConnection(host, port, timeout=0.3)
        conn.request("POST", "/", body=b"{}", headers={"Content-Type": "application/json"})
        conn.getresponse()
    except (OSError, http.client.HTTPException):
        return True
    return False


def test_max_count_stops_serving(make_receiver: Any) -> None:
    """After max_count deliveries serve_forever returns."""
    receiver = Receiver("127.0.0.1", 0, None, out=io.StringIO(), max_count=2)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        assert post(receiver, signed(None)) == 204
        assert post(receiver, signed(None)) == 204
        thread.join(5)
        assert not thread.is_alive()
        assert len(receiver.deliveries) == 2
    finally:
        if thread.is_alive():
            receiver.shutdown()
        receiver.close()


def test_missing_content_length_gets_411(make_receiver: Any) -> None:
    """A POST without Content-Length is answered 411 and not printed."""
    out = io.StringIO()
    receiver = make_receiver(out=out)
    with socket.create_connection(receiver.address, timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = sock.recv(100)
    assert answer.startswith(b"HTTP/1.0 411") or answer.startswith(b"HTTP/1.1 411")
    assert out.getvalue() == ""


def test_receiver_binds_loopback_by_default() -> None:
    """Without a host the receiver listens on 127.0.0.1."""
    with Receiver(out=io.StringIO()) as receiver:
        assert receiver.address[0] == "127.0.0.1"
        assert receiver.url == f"http://127.0.0.1:{receiver.address[1]}/"


def test_strict_without_secret_is_refused() -> None:
    """--strict without --secret cannot check anything and is refused."""
    with pytest.raises(ValueError, match="--strict needs --secret"):
        Receiver(strict=True, out=io.StringIO())
    err = io.StringIO()
    assert run_receiver(port=0, strict=True, out=io.StringIO(), err=err) == 2
    assert "--strict needs --secret" in err.getvalue()


def test_dispatcher_client_deliveries_verify_at_the_receiver(make_receiver: Any) -> None:
    """A delivery made by HttpClient with our headers verifies ok/ok at the receiver (allowed loopback)."""
    out = io.StringIO()
    receiver = make_receiver(secret="whsec_" + base64.b64encode(b"k" * 32).decode(), out=out, responses=[200])
    headers = signed(receiver.secret, timestamp=int(time.time()))
    with HttpClient(EgressPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),))) as client:
        record = client.send(OutboundRequest(receiver.url + "hook", BODY, headers, timeout_seconds=5))
    assert record.status_code == 200
    assert "whisperer: ok standard: ok" in out.getvalue()


def run_in_thread(**kwargs: Any) -> tuple[threading.Thread, list[int], io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(run_receiver(port=0, out=out, err=err, **kwargs)), daemon=True
    )
    thread.start()
    wait_until(lambda: "listening on" in err.getvalue(), timeout=5)
    return thread, result, out, err


def _port(err: io.StringIO) -> int:
    url = err.getvalue().split("listening on ", 1)[1].split()[0]
    return int(url.rstrip("/").rsplit(":", 1)[1])


def test_run_receiver_exits_1_after_a_strict_failure() -> None:
    """run_receiver returns 1 once --strict rejected a delivery."""
    thread, result, out, err = run_in_thread(secret="k", strict=True)
    conn = http.client.HTTPConnection("127.0.0.1", _port(err), timeout=5)
    conn.request("POST", "/", body=BODY, headers=signed("wrong", timestamp=int(time.time())))
    assert conn.getresponse().status == 401
    conn.close()
    thread.join(5)
    assert result == [1]
    assert "BAD" in out.getvalue()


def test_run_receiver_exits_0_after_max_count_good_deliveries() -> None:
    """run_receiver returns 0 after max_count deliveries without failure."""
    thread, result, _out, err = run_in_thread(secret="k", strict=True, max_count=1)
    conn = http.client.HTTPConnection("127.0.0.1", _port(err), timeout=5)
    conn.request("POST", "/", body=BODY, headers=signed("k", timestamp=int(time.time())))
    assert conn.getresponse().status == 204
    conn.close()
    thread.join(5)
    assert result == [0]
