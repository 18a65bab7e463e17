"""The delivery process's one writer of replies (``dispatcher.transport._ReplySender``): every reply reaches
the parent once, replies that finish together travel as one message, a lone reply is not held back, and a
parent that is gone is noticed."""

from __future__ import annotations

import pickle
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection

from dispatcher.messages import AttemptReply
from dispatcher.transport import _ReplySender


def _reply(n: int) -> AttemptReply:
    return AttemptReply(n, 0.0, 0.01, 204, None, {}, "")


@contextmanager
def _pair(small_buffer: bool = False) -> Iterator[tuple[_ReplySender, Connection]]:
    child_end, parent_end = socket.socketpair()
    if small_buffer:  # the parent is not reading yet: the sender blocks after a few kilobytes
        child_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        parent_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sender = _ReplySender(Connection(child_end.detach()))
    parent = Connection(parent_end.detach())
    try:
        yield sender, parent
    finally:
        sender.close()
        parent.close()


def _read(parent: Connection, expected: int, timeout: float = 10.0) -> list[list[AttemptReply]]:
    messages: list[list[AttemptReply]] = []
    deadline = time.monotonic() + timeout
    while sum(len(m) for m in messages) < expected and parent.poll(max(0.0, deadline - time.monotonic())):
        messages.append(pickle.loads(parent.recv_bytes()))
    return messages


def test_replies_put_by_many_threads_at_once_all_arrive_once_in_fewer_messages() -> None:
    """200 threads each put one reply at the same moment while the parent is not reading (its socket
    fills): every request id arrives exactly once, and in fewer messages than replies (those that waited
    while the sender was blocked went together)."""
    with _pair(small_buffer=True) as (sender, parent):
        go = threading.Barrier(200)

        def put(n: int) -> None:
            go.wait()
            assert sender.put(_reply(n))

        threads = [threading.Thread(target=put, args=(n,)) for n in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        messages = _read(parent, 200)
    ids = sorted(r.request_id for m in messages for r in m)
    assert ids == list(range(200))
    assert len(messages) < 200


def test_a_lone_reply_is_sent_at_once() -> None:
    """One reply with nothing else to wait for reaches the parent without waiting for company."""
    with _pair() as (sender, parent):
        started = time.monotonic()
        sender.put(_reply(7))
        assert parent.poll(2.0), "the reply did not arrive"
        assert [r.request_id for r in pickle.loads(parent.recv_bytes())] == [7]
        assert time.monotonic() - started < 1.0


def test_a_parent_that_is_gone_makes_put_answer_false() -> None:
    """Once the parent's end is closed, sending fails and ``put`` says so (the attempt threads then stop)."""
    child_end, parent_end = socket.socketpair()
    sender = _ReplySender(Connection(child_end.detach()))
    parent_end.close()
    deadline = time.monotonic() + 5
    while sender.put(_reply(1)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not sender.put(_reply(2))
    sender.close()


def test_a_reply_that_cannot_be_sent_closes_the_link_so_the_parent_restarts_the_child() -> None:
    """Should sending ever fail for another reason than a gone parent (here: a reply that cannot be
    pickled), the child does not go on silently without replies: its end closes (the parent reads EOF and
    restarts it) and ``put`` answers False."""
    child_end, parent_end = socket.socketpair()
    sender = _ReplySender(Connection(child_end.detach()))
    parent = Connection(parent_end.detach())
    try:
        sender.put(_reply(1)._replace(response_headers={"x": threading.Lock()}))  # type: ignore[dict-item]
        assert parent.poll(5.0)
        try:
            parent.recv_bytes()
            raise AssertionError("a message arrived instead of EOF")
        except EOFError:
            pass
        assert not sender.put(_reply(2))
    finally:
        sender.close()
        parent.close()
