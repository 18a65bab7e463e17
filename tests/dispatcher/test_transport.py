"""ProcessClient: attempts made in real child processes, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from multiprocessing.connection import Connection
from urllib.parse import parse_qs

import pytest

from dispatcher.errors import DeliveryError
from dispatcher.messages import AttemptReply, AttemptRequest, TokenReply, TokenRequest
from dispatcher.outbound import OutboundRequest
from dispatcher.supervise import Spawn, Supervisor
from dispatcher.transport import _CAN_FORK, ProcessClient, _Sibling
from reconciler.model import SecretRef, TokenAuth
from tests.conftest import wait_until
from tests.dispatcher.test_http import LocalServer, respond_ok, start_server, stop_server
from tests.requires import requires

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
#: Forked delivery processes need pidfds (Linux 5.3+, not refused by seccomp); CI's kernel has them.
FORKS = requires(_CAN_FORK, "a kernel with working pidfds (forked delivery processes)")


@pytest.fixture
def server() -> Iterator[LocalServer]:
    s = start_server()
    yield s
    stop_server(s)


def answer_200(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_attempt_in_a_child_posts_the_request_and_returns_the_answer(server: LocalServer) -> None:
    """The child sends the body and headers as given and reports status, headers of interest, excerpt."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(429)
        handler.send_header("Retry-After", "7")
        handler.send_header("Content-Length", "4")
        handler.end_headers()
        handler.wfile.write(b"slow")

    server.respond = answer
    with ProcessClient(LOOPBACK, processes=2, threads_per_process=2) as client:
        assert len(set(client.pids)) == 2 and os.getpid() not in client.pids
        for i in range(4):  # round robin: both children serve
            record = client.send(OutboundRequest(server.url(), b'{"n":%d}' % i, {"X-Test": str(i)}, 5.0))
            assert record.status_code == 429
            assert record.response_headers.get("Retry-After") == "7"
            assert record.response_excerpt == "slow"
            assert record.error is None
    assert [seen.body for seen in server.requests] == [b'{"n":%d}' % i for i in range(4)]
    assert [seen.headers["X-Test"] for seen in server.requests] == ["0", "1", "2", "3"]


def test_egress_guard_applies_in_the_child(server: LocalServer) -> None:
    """A child allowed only another network refuses 127.0.0.1 before connecting."""
    with ProcessClient((ipaddress.ip_network("192.0.2.0/24"),), processes=1) as client:
        record = client.send(OutboundRequest(server.url(), b"{}", {}, 5.0))
    assert record.status_code is None
    assert record.error is not None and record.error.startswith("egress denied")
    assert server.requests == []


def hang_until_released(server: LocalServer) -> tuple[threading.Event, threading.Event]:
    """Make ``server`` hold every request: ``entered`` is set when one arrives, ``release`` lets it go."""
    entered, release = threading.Event(), threading.Event()

    def hang(handler: BaseHTTPRequestHandler) -> None:
        entered.set()
        release.wait(10)

    server.respond = hang
    return entered, release


def test_killed_child_fails_its_attempt_in_flight_and_is_replaced(server: LocalServer) -> None:
    """kill -9 of a child mid-attempt: that attempt gets an error record, a new child serves the next."""
    entered, release = hang_until_released(server)
    with ProcessClient(LOOPBACK, processes=1) as client:
        [old] = client.pids
        results = []
        sender = threading.Thread(
            target=lambda: results.append(client.send(OutboundRequest(server.url(), b"{}", {}, 30.0)))
        )
        sender.start()
        assert entered.wait(10)
        os.kill(old, signal.SIGKILL)
        sender.join(10)
        assert not sender.is_alive()
        [record] = results
        assert record.status_code is None
        assert record.error == "delivery process exited during the attempt"
        release.set()
        wait_until(lambda: client.pids != [old], timeout=10)
        server.respond = respond_ok
        assert client.send(OutboundRequest(server.url(), b"{}", {}, 5.0)).status_code == 200


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[1])


@FORKS
def test_the_second_child_is_forked_from_the_first_and_outlives_it(server: LocalServer) -> None:
    """With two processes the second is the first's fork (so it shares the first's imported memory:
    bench/memory.py measures it), serves attempts, and keeps serving when the first is killed; the first is
    started again, fresh, and close() stops the forked one too."""
    with ProcessClient(LOOPBACK, processes=2, threads_per_process=2) as client:
        first, second = client.pids
        assert _parent_of(first) == os.getpid() and _parent_of(second) == first
        for i in range(4):
            assert client.send(OutboundRequest(server.url(), b'{"n":%d}' % i, {}, 5.0)).status_code == 200
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: client.pids[0] != first, timeout=10)
        restarted = client.pids[0]
        assert _parent_of(restarted) == os.getpid() and client.pids[1] == second
        for _ in range(4):  # round robin: the survivor and the fresh one both serve
            assert client.send(OutboundRequest(server.url(), b"{}", {}, 5.0)).status_code == 200
    wait_until(lambda: not _alive(second), timeout=10)  # close() stops a forked child too


def test_close_stops_every_child() -> None:
    """close() ends the children (they finish what is in flight, then exit)."""
    client = ProcessClient(LOOPBACK, processes=2)
    pids = client.pids
    assert all(_alive(pid) for pid in pids)
    client.close()
    wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=10)


def test_token_flow_and_callbacks_are_made_by_the_child(server: LocalServer) -> None:
    """fetch_token and post_json go through a child: the token comes back, a failure is a DeliveryError that
    does not quote the password, and a callback is POSTed as JSON."""
    answers = iter([b'{"key": "tok-1"}', b"not json"])
    server.respond = lambda handler: answer_200(handler, next(answers, b""))
    auth = TokenAuth(url=server.url("/token"), username="oms", password=SecretRef("env", "PW"))
    with ProcessClient(LOOPBACK, processes=1) as client:
        assert client.fetch_token(auth, "s3cret-pw", 5.0) == "tok-1"
        with pytest.raises(DeliveryError) as failure:
            client.fetch_token(auth, "s3cret-pw", 5.0)
        assert "not JSON" in str(failure.value) and "s3cret-pw" not in str(failure.value)
        server.respond = respond_ok
        record = client.post_json(server.url("/callback"), {"b": 1, "a": "x"}, 5.0)
    assert record.status_code == 200
    token_request, _, callback = server.requests
    assert parse_qs(token_request.body.decode()) == {"username": ["oms"], "password": ["s3cret-pw"]}
    assert (callback.path, callback.body) == ("/callback", b'{"a":"x","b":1}')
    assert callback.headers["Content-Type"] == "application/json"


def test_child_answers_every_request_even_when_the_client_fails_unexpectedly() -> None:
    """An unexpected exception while making a request still produces a reply (an error naming the exception
    type only), so no engine worker waits for an answer that never comes."""
    from dispatcher import transport

    class Broken:
        def send(self, request: OutboundRequest) -> None:
            raise RuntimeError("secret-in-message")

        def fetch_token(self, *args: object) -> None:
            raise RecursionError("deep")

    request = AttemptRequest(7, "http://127.0.0.1:9/", b"{}", {}, 5.0, None)
    attempt = transport._answer(Broken(), request)
    assert isinstance(attempt, AttemptReply)
    assert attempt.request_id == 7 and attempt.status_code is None
    assert attempt.error == "internal error in the delivery process (RuntimeError)"
    auth = TokenAuth("http://127.0.0.1:9/token", "u", SecretRef("env", "WEBHOOK_P"))
    token = transport._answer(Broken(), TokenRequest(8, auth, "pw", 5.0))
    assert token == TokenReply(8, None, "internal error in the delivery process (RecursionError)")


def test_messages_pickle_as_compactly_as_plain_tuples() -> None:
    """A request pickles to at most a few bytes more than the same values as a tuple (a class reference),
    and comes back equal and of its type."""
    import pickle

    request = AttemptRequest(7, "https://a.example.com/h", b'{"x":1}', {"webhook-id": "ab" * 16}, 5.0, None)
    data = pickle.dumps(request, pickle.HIGHEST_PROTOCOL)
    assert len(data) <= len(pickle.dumps(tuple(request), pickle.HIGHEST_PROTOCOL)) + 64
    back = pickle.loads(data)
    assert back == request and type(back) is AttemptRequest


def test_deeply_nested_token_answer_is_a_delivery_error(server: LocalServer) -> None:
    """A token endpoint answering JSON nested too deeply to parse fails the token request cleanly."""
    server.respond = lambda handler: answer_200(handler, b"[" * 60000)
    auth = TokenAuth(url=server.url("/token"), username="oms", password=SecretRef("env", "PW"))
    with ProcessClient(LOOPBACK, processes=1) as client, pytest.raises(DeliveryError, match="not JSON"):
        client.fetch_token(auth, "pw", 5.0)


def test_close_while_a_child_is_exiting_closes_its_socket_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``close()`` racing the reply reader of a child that has just exited closes the socket exactly once:
    shutdown never fails with EBADF (a double close of one fd), however the two threads interleave."""
    from multiprocessing.connection import Connection

    closes: list[int] = []
    real_close = Connection._close  # type: ignore[attr-defined]

    def counting_close(self: Connection) -> None:
        closes.append(id(self))
        real_close(self)

    monkeypatch.setattr(Connection, "_close", counting_close)
    for _ in range(10):
        client = ProcessClient((), processes=1)
        [pid] = client.pids
        closes.clear()
        os.kill(pid, signal.SIGKILL)  # the reader sees EOF and closes; close() below closes too
        client.close()
        wait_until(lambda: closes, timeout=5)
        assert len(closes) == len(set(closes)) == 1


def _reader_spawn(supervisor: Supervisor) -> Spawn:
    """Reply readers and the sweeper started as ``dispatch run`` starts them: a return is not a fault, an
    exception is."""
    return lambda name, target: supervisor.spawn(name, target, until_stop=False)


def test_a_reply_reader_dying_of_a_bug_is_a_supervisor_fault(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in a reply reader (here: a reply it cannot decode) reaches the supervisor as a fault of
    ``dispatch-replies-N`` naming the exception type only, instead of the reader vanishing silently."""
    import pickle

    from dispatcher import transport

    class Undecodable:
        """``pickle`` as the transport module sees it, except that no reply decodes."""

        dumps = staticmethod(pickle.dumps)
        HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL

        @staticmethod
        def loads(data: bytes) -> object:
            raise pickle.UnpicklingError("secret-in-message")

    failed = threading.Event()
    supervisor = Supervisor(on_fault=failed.set)
    monkeypatch.setattr(transport, "pickle", Undecodable)
    with ProcessClient(LOOPBACK, processes=1, spawn=_reader_spawn(supervisor)) as client:
        sender = threading.Thread(
            target=lambda: client.send(OutboundRequest(server.url(), b"{}", {}, 0.1)), daemon=True
        )
        sender.start()  # its reply never reaches it: it waits out its bound, in the background
        assert failed.wait(10)
    fault = supervisor.fault
    assert fault is not None and fault.thread == "dispatch-replies-0"
    assert fault.reason.startswith("UnpicklingError at ") and "secret-in-message" not in fault.reason


def test_a_sweeper_dying_of_a_bug_is_a_supervisor_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweeper (which fails submitted attempts a hung child never answers) runs under the supervisor
    too: an exception in it is a fault of ``dispatch-replies-sweeper``."""

    def broken_sweep(self: ProcessClient) -> None:
        raise RuntimeError("secret-in-message")

    failed = threading.Event()
    supervisor = Supervisor(on_fault=failed.set)
    monkeypatch.setattr(ProcessClient, "_sweep", broken_sweep)
    with ProcessClient(LOOPBACK, processes=1, spawn=_reader_spawn(supervisor)):
        assert failed.wait(10)
    fault = supervisor.fault
    assert fault is not None and fault.thread == "dispatch-replies-sweeper"
    assert "secret-in-message" not in fault.reason


def test_restarting_a_child_and_closing_are_not_reader_faults(server: LocalServer) -> None:
    """A reader's deliberate returns (its killed child replaced by a new reader, the client closing) leave
    the supervisor healthy."""
    supervisor = Supervisor()
    with ProcessClient(LOOPBACK, processes=1, spawn=_reader_spawn(supervisor)) as client:
        [old] = client.pids
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: client.pids != [old], timeout=10)
        assert client.send(OutboundRequest(server.url(), b"{}", {}, 5.0)).status_code == 200
    assert supervisor.fault is None


def test_a_forked_childs_handle_can_be_waited_on_by_several_threads_at_once() -> None:
    """The reply reader and ``close`` both wait for a forked child's exit: both return once it has exited,
    again as often as asked, and killing it afterwards is harmless."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    ours, theirs = socket.socketpair()  # the sibling's socket: open and quiet while it lives
    conn = Connection(ours.detach())
    handle = _Sibling(proc.pid, conn)
    assert handle.alive
    with pytest.raises(subprocess.TimeoutExpired):
        handle.wait(0)  # it has not exited yet
    results: list[object] = []
    waiters = [threading.Thread(target=lambda: results.append(handle.wait())) for _ in range(3)]
    for w in waiters:
        w.start()
    for w in waiters:
        w.join(30)
    assert results == [None, None, None]
    assert handle.wait(0) is None
    handle.kill()
    proc.wait(10)
    theirs.close()
    conn.close()


def test_a_sibling_whose_socket_already_ended_is_not_taken_for_alive() -> None:
    """A pid whose socket has ended (the sibling died after its hello, and the pid may name another process
    by now) is not watched: the caller starts that delivery process fresh."""
    ours, theirs = socket.socketpair()
    theirs.close()
    conn = Connection(ours.detach())
    assert _Sibling(os.getpid(), conn).alive is False
    conn.close()


@FORKS
def test_a_killed_sibling_is_started_again_fresh_while_the_others_serve_on(server: LocalServer) -> None:
    """With three processes (two forked from the first), kill -9 of a forked one: it is started again as a
    fresh process (the main process's child), the first and the other sibling are untouched, and every
    process serves."""
    with ProcessClient(LOOPBACK, processes=3, threads_per_process=2) as client:
        first, second, third = client.pids
        assert {_parent_of(second), _parent_of(third)} == {first}
        os.kill(third, signal.SIGKILL)
        wait_until(lambda: client.pids[2] != third, timeout=10)
        assert client.pids[:2] == [first, second] and _parent_of(client.pids[2]) == os.getpid()
        for _ in range(6):  # round robin over the three
            assert client.send(OutboundRequest(server.url(), b"{}", {}, 5.0)).status_code == 200
