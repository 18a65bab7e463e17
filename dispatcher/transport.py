"""HTTP attempts in child processes, so delivery uses a second core and never starves ingest.

Python threads share one interpreter lock: with attempts (``requests`` is CPU-hungry) and ingest in one
process, the ingest threads waited for the lock behind every attempt and acknowledgements slowed to the pace
of deliveries (profiled: 674 acks/s with one webhook, against 17,900 with none). ``ProcessClient`` keeps the
engine's ``Client`` interface but sends each ``OutboundRequest`` to a child process running an ``HttpClient``
(the egress guard included) and waits for its ``AttemptRecord``; the engine's worker threads only wait.

A child is ``python -m dispatcher.transport`` on one end of a socket pair, not a ``multiprocessing`` child:
``spawn`` re-imports the parent's ``__main__`` (the whole CLI) in every child, and pickles through
``ForkingPickler``, whose set-up per message cost more than the message (both profiled). Here a child imports
only the HTTP client, and messages are the named tuples of ``dispatcher.messages`` pickled with the fastest
protocol, framed by ``multiprocessing.connection.Connection`` (a length, then the bytes). Token requests and
callbacks go to the children too, so the main process never imports ``requests`` (about 14 MB of memory).

The children share their imports: the first is started with the others' socket ends too and, once it has
imported the HTTP client and frozen the collector's view of those objects (``gc.freeze``: the collector then
never writes to their pages), forks the others from itself before any thread starts. Copy-on-write keeps
``requests``, urllib3 and the interpreter's own start-up memory shared between them: each further delivery
process costs about 4 MB at rest (bench/memory.py) where a fresh interpreter costs about 17. A forked
child says its pid first; the parent watches it through a pidfd (it is the first child's child, reaped by
the kernel while the first child lives, by the init process after). A child started again after dying is
a fresh interpreter; where pidfds do not work every one is.

A child that dies fails its attempts in flight (they are retried like any connection error) and is started
again. Children ignore SIGINT/SIGTERM/SIGHUP (the parent decides when to stop) and exit when their socket
closes, including when the parent is killed.

In a child, one thread sends the replies (``_ReplySender``): those that finish while it sends go together
as one message. Each child's replies are read by a thread, and late submitted attempts are failed by a
sweeper thread, both started through ``spawn`` (the supervisor's, in ``dispatch run``): a reader or sweeper
that dies of a bug would strand replies or attempts, so that is a fault of the process, not a silent loss.
Their returns are all deliberate (a reader's child was restarted by a new reader, or the client closed), so
``spawn`` must not count a return as a fault.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import pickle
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_network
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatcher.errors import DeliveryError
from dispatcher.growing_pool import GrowingPool
from dispatcher.logs import fields, get_logger
from dispatcher.messages import AttemptReply, AttemptRequest, Reply, Request, TokenReply, TokenRequest
from dispatcher.outbound import OutboundRequest, json_request
from dispatcher.store.base import AttemptRecord
from dispatcher.supervise import Spawn, describe, start_thread

if TYPE_CHECKING:
    from reconciler.model import TokenAuth

log = get_logger("transport")

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_STOP = b""  # asks a child to finish its attempts in flight and exit
# The package root, so a child finds ``dispatcher`` whatever the parent's working directory and sys.path.
_ROOT = str(Path(__file__).resolve().parent.parent)
# Endpoints whose connections a child keeps open at once (HttpClient's default is 256: 1,000 endpoints
# answering after 200 ms then reconnected on most attempts).
_MAX_ENDPOINTS = 2048


def _record_from(reply: AttemptReply) -> AttemptRecord:
    return AttemptRecord(*reply[1:])


def _answer(client: Any, item: Request) -> Reply:
    """The child's reply to one request (``client`` is its ``HttpClient``). Always a reply: a request left
    unanswered would hold an engine worker for good."""
    started_at = time.time()
    try:
        if isinstance(item, TokenRequest):
            try:
                token = client.fetch_token(item.auth, item.password, item.timeout_seconds)
                return TokenReply(item.request_id, token, None)
            except DeliveryError as exc:  # its message never holds the password or the token
                return TokenReply(item.request_id, None, str(exc))
        r = client.send(
            OutboundRequest(item.url, item.body, item.headers, item.timeout_seconds, item.basic_auth)
        )
        return AttemptReply(item.request_id, r.started_at, r.duration_seconds, r.status_code, r.error,
                            r.response_headers, r.response_excerpt)  # fmt: skip
    except Exception as exc:  # a bug: named by type only (a message could quote a secret)
        error = f"internal error in the delivery process ({type(exc).__name__})"
        sys.stderr.write(f"dispatcher.transport: {error}\n")
        if isinstance(item, TokenRequest):
            return TokenReply(item.request_id, None, error)
        return AttemptReply(item.request_id, started_at, time.time() - started_at, None, error, {}, "")


# -- the child -------------------------------------------------------------------------------------------


class _ReplySender:
    """The child's one writer of replies: attempt threads ``put`` theirs and go on; a thread of its own
    sends what has gathered meanwhile as one message (a list), at once when one waits alone.

    Each thread sending its own reply under a lock made those that finished together queue on the lock
    and on the interpreter lock, one system call each: with hundreds of attempts waiting on slow
    receivers, replies come due in bursts."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._items: list[Reply] = []
        self._ready = threading.Condition()
        self._closing = False
        self.failed = False  # the parent is gone: no reply can reach it
        self._thread = threading.Thread(target=self._run, name="replies", daemon=True)
        self._thread.start()

    def put(self, reply: Reply) -> bool:
        """Queue ``reply``; False once the parent is gone (nothing is queued then: none would be sent)."""
        if self.failed:
            return False
        with self._ready:
            self._items.append(reply)
            if len(self._items) == 1:
                self._ready.notify()
        return not self.failed

    def close(self) -> None:
        """Send what is queued, then stop."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._items and not self._closing:
                    self._ready.wait()
                batch, self._items = self._items, []
                if not batch:
                    return
            try:
                self._conn.send_bytes(pickle.dumps(batch, _PROTOCOL))
            except OSError:
                self.failed = True  # the parent is gone; the attempt threads stop
                return
            except Exception as exc:  # a bug: crash-only, the parent sees its end close and restarts us
                sys.stderr.write(f"dispatcher.transport: replies failed ({type(exc).__name__})\n")
                self.failed = True
                with contextlib.suppress(OSError):
                    self._conn.close()
                return


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one: a child keeps a connection per thread and
    endpoint, and 1,024 (systemd's default soft limit) is fewer than 1,000 endpoints' kept-alive
    connections plus those in flight."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _hello(pid: int) -> bytes:
    """A forked child's first message: its pid (the parent did not start it, so does not know it)."""
    return b"hello %d" % pid


def _fork_siblings(own_fd: int, sibling_fds: Sequence[int]) -> Connection:
    """In the first child, before any thread starts: fork one sibling per fd of ``sibling_fds``, each
    serving that fd (and saying its pid on it first). Returns the connection this process serves."""
    if not sibling_fds:
        return Connection(own_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the siblings are reaped by the kernel, not waited for
    gc.collect()
    gc.freeze()  # what is imported stays shared: the collector never touches it again, here or there
    for fd in sibling_fds:
        if os.fork() == 0:
            for other in (own_fd, *sibling_fds):
                if other != fd:
                    os.close(other)
            conn = Connection(fd)
            conn.send_bytes(_hello(os.getpid()))
            return conn
    for fd in sibling_fds:
        os.close(fd)
    return Connection(own_fd)


def _child_main(argv: Sequence[str] | None = None) -> int:
    """Runs in the child: attempts requests from the socket on up to ``--threads`` threads (started as
    attempts in flight need them), answers on it."""
    p = argparse.ArgumentParser(prog="python -m dispatcher.transport")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--allow", action="append", default=[])
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--fork-fd", type=int, action="append", default=[], help="fork a sibling serving this fd")
    args = p.parse_args(argv)
    from dispatcher.egress import EgressPolicy
    from dispatcher.http import HttpClient

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    _raise_open_files_limit()
    if args.nice > 0:
        os.nice(args.nice)  # below the main process: acknowledgements before attempts (ProcessClient)
    conn = _fork_siblings(args.fd, args.fork_fd)
    allowed = tuple(ip_network(cidr) for cidr in args.allow)
    replies = _ReplySender(conn)

    def attempt(client: HttpClient, item: Request) -> bool:
        return replies.put(_answer(client, item))  # False: the parent is gone

    # Enough pooled connections per endpoint for every thread, and a pool for every endpoint up to
    # _MAX_ENDPOINTS (beyond it the least recently used endpoint's connections are closed and reopened).
    with HttpClient(
        EgressPolicy(allowed), pool_per_endpoint=args.threads, max_endpoints=_MAX_ENDPOINTS
    ) as client:
        pool: GrowingPool[Request] = GrowingPool(
            lambda item: attempt(client, item), args.threads, name="attempt"
        )
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return 0  # the parent died: attempts in flight are abandoned (their leases expire)
            if data == _STOP:
                break
            pool.submit(pickle.loads(data))
        pool.close()  # finish the attempts already received, then stop
        replies.close()
    return 0


# -- the parent ------------------------------------------------------------------------------------------


class _Waiter:
    """One request in flight: a lock held until the reply arrives (lighter than a Future: profiled)."""

    __slots__ = ("lock", "reply")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.reply: Reply | None = None

    def set(self, reply: Reply | None) -> None:
        """The child's reply, or None when the child died first."""
        self.reply = reply
        self.lock.release()

    def wait(self, timeout_seconds: float) -> Reply | None:
        """The reply; None when the child died first or did not answer in time."""
        return self.reply if self.lock.acquire(timeout=timeout_seconds) else None


class _Completion:
    """One attempt in flight whose caller did not wait: the reply reader (or the sweeper, or the child's
    death) finishes it by calling ``done`` with its record, exactly once."""

    __slots__ = ("_done", "_lock", "deadline", "started_at")

    def __init__(self, done: Callable[[AttemptRecord], None], started_at: float, deadline: float) -> None:
        self.started_at = started_at
        self.deadline = deadline  # time.monotonic() after which the child is taken not to answer
        self._done: Callable[[AttemptRecord], None] | None = done
        self._lock = threading.Lock()

    def set(self, reply: Reply | None) -> None:
        if reply is None:
            self.fail("delivery process exited during the attempt")
            return
        try:
            if not isinstance(reply, AttemptReply):
                raise TypeError(type(reply).__name__)
            record = _record_from(reply)
        except Exception as exc:  # a reply that is not an attempt's: still this attempt's end, never a leak
            self.fail(f"internal error in the dispatcher ({type(exc).__name__})")
            return
        self._call(record)

    def fail(self, error: str) -> None:
        self._call(AttemptRecord(self.started_at, time.time() - self.started_at, error=error))

    def _call(self, record: AttemptRecord) -> None:
        with self._lock:
            done, self._done = self._done, None
        if done is None:  # the first of the reply, the sweeper and a failed send wins
            return
        try:
            done(record)
        except Exception as exc:
            # A bug in ``done`` is logged, never raised: not into a reply reader (it would strand every later
            # reply of its child), the sweeper, or a submitting worker (it would free the slot twice). Where,
            # not what: a message could quote a secret.
            log.error("transport.completion_failed", extra=fields(error=describe(exc)))


def _pidfds_work() -> bool:
    """Whether this kernel lets a process be watched by pidfd (Linux 5.3+, and not refused by a seccomp
    profile): siblings are forked only then; else every delivery process is started fresh."""
    if sys.platform != "linux" or not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


_CAN_FORK = _pidfds_work()
#: How long the parent waits for all the forked siblings' pids (the first child imports the HTTP client
#: first), in all: past it, or once the first child has exited, the ones missing are started fresh.
_HELLO_SECONDS = 30.0


def _read_hello(conn: Connection, deadline: float, first: subprocess.Popen[bytes]) -> int | None:
    """A forked sibling's pid, its first message; None when it is not one, or does not come before
    ``deadline`` (monotonic) or before ``first`` (the process forking it) exits."""
    try:
        while not conn.poll(0.05):
            if time.monotonic() >= deadline or first.poll() is not None:
                return None
        head, _, pid = conn.recv_bytes().partition(b" ")
        return int(pid) if head == b"hello" else None
    except (EOFError, OSError, ValueError):
        return None


class _Sibling:
    """A forked child as the parent sees it: not its own child, so watched through a pidfd (which tells
    when it exits, and signals it without the risk of a reused pid). Its exit status is its parent's.
    ``alive`` is False when it is gone already (or cannot be watched): it is then started fresh."""

    def __init__(self, pid: int, conn: Connection) -> None:
        self.pid = pid
        self._pidfd: int | None = None
        with contextlib.suppress(OSError):  # gone already (ProcessLookupError), or no descriptor left
            self._pidfd = os.pidfd_open(pid)
        # The pid came in its hello; had it died since, its pid could name another process by now. Its
        # socket is open until it exits and it sends nothing unasked: a quiet socket proves the pidfd is its.
        self.alive = self._pidfd is not None and not conn.poll(0)
        if self._pidfd is not None:
            # Closed when this handle is dropped: never while a thread waits on it (that thread holds it).
            weakref.finalize(self, os.close, self._pidfd)

    def wait(self, timeout: float | None = None) -> int | None:
        """Until it has exited (``subprocess.TimeoutExpired`` after ``timeout``); its exit code is not
        known here (None). Safe from several threads at once (the reply reader and ``close``): the pidfd
        stays readable once the process has exited."""
        if self._pidfd is not None:
            poller = select.poll()  # not select(): descriptors past 1023
            poller.register(self._pidfd, select.POLLIN)
            if not poller.poll(None if timeout is None else max(0.0, timeout) * 1000):
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
        return None

    def kill(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)


class _Child:
    """One delivery process: the parent's end of its socket, and the process."""

    def __init__(self, conn: Connection, process: subprocess.Popen[bytes] | _Sibling) -> None:
        self.conn = conn
        self.process = process
        self.started = time.monotonic()
        self.pending: dict[int, _Waiter | _Completion] = {}
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()  # one message at a time on the socket
        self.alive = True

    @classmethod
    def start(
        cls, allowed: tuple[IPv4Network | IPv6Network, ...], threads: int, nice: int, count: int = 1
    ) -> list[_Child]:
        """``count`` delivery processes: one started fresh, the others forked from it (see the module
        docstring). A sibling that does not say its pid within ``_HELLO_SECONDS`` is started fresh instead."""
        pairs = [socket.socketpair() for _ in range(count if _CAN_FORK else 1)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (_ROOT, env.get("PYTHONPATH"))))
        # -P: the working directory is not put on sys.path (a stray argparse.py there must not be imported).
        command = [sys.executable, "-P", "-m", "dispatcher.transport", "--fd", str(pairs[0][1].fileno())]
        command += [f"--fork-fd={child_end.fileno()}" for _, child_end in pairs[1:]]
        command += ["--threads", str(threads), "--nice", str(nice), *(f"--allow={net}" for net in allowed)]
        try:
            # stdout too: with --stdin it carries the acknowledgements; tracebacks go to stderr.
            process = subprocess.Popen(
                command,
                pass_fds=tuple(child_end.fileno() for _, child_end in pairs),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            for parent_end, _ in pairs:
                parent_end.close()
            raise
        finally:
            for _, child_end in pairs:
                child_end.close()
        children = [cls(Connection(pairs[0][0].detach()), process)]
        conns = [Connection(parent_end.detach()) for parent_end, _ in pairs[1:]]
        deadline = time.monotonic() + _HELLO_SECONDS
        try:
            for conn in conns:
                pid = _read_hello(conn, deadline, process)
                sibling = None if pid is None else _Sibling(pid, conn)
                if sibling is not None and sibling.alive:
                    children.append(cls(conn, sibling))
                else:
                    conn.close()  # a sibling forked late finds its socket closed and exits
            while len(children) < count:  # no forking here: every one fresh
                children.extend(cls.start(allowed, threads, nice))
        except BaseException:
            for conn in conns:
                conn.close()
            for child in children:
                child.close_conn()
                child.process.kill()
            raise
        return children

    def close_conn(self) -> None:
        """Close the parent's end once, whichever thread gets here first: the reply reader (the child exited)
        and ``ProcessClient.close`` both do, and two closes of one fd race (EBADF, or closing a reused fd)."""
        with self.send_lock:
            self.conn.close()  # a Connection closes its fd only while it still has one


class ProcessClient:
    """The engine's ``Client`` with attempts made in ``processes`` child processes. ``close()`` stops them.

    Token requests and callbacks (``fetch_token``, ``post_json``) are made by the children too. ``nice``
    lowers the children's CPU priority by that much: on shared cores, the main process (ingest and its
    acknowledgements) then runs first and attempts take the CPU left (``dispatch run --delivery-nice``).
    ``spawn`` starts the reply readers and the sweeper (see the module docstring).
    """

    def __init__(
        self,
        allowed: tuple[IPv4Network | IPv6Network, ...],
        *,
        processes: int = 1,
        threads_per_process: int = 32,
        nice: int = 0,
        spawn: Spawn = start_thread,
    ) -> None:
        self._allowed = allowed
        self._start_thread = spawn
        self._threads = threads_per_process
        self._nice = nice
        self._ids = itertools.count(1)
        self._next = itertools.count()
        self._closed = False
        self._stopped = threading.Event()
        self._restart_delay = 0.0
        self._restart_lock = threading.Lock()  # a restart and close() agree on whether it is kept
        self._children: list[_Child] = []
        try:
            self._children = _Child.start(allowed, threads_per_process, nice, processes)
            for i, child in enumerate(self._children):
                self._watch(i, child)
        except BaseException:
            self.close()
            raise
        self._start_thread("dispatch-replies-sweeper", self._sweep)

    def _watch(self, index: int, child: _Child) -> _Child:
        """Start the thread that reads ``child``'s replies."""
        self._start_thread(f"dispatch-replies-{index}", lambda: self._read_replies(index, child))
        log.info("transport.child_started", extra=fields(index=index, pid=child.process.pid))
        return child

    def _read_replies(self, index: int, child: _Child) -> None:
        while True:
            try:
                batch: list[Reply] = pickle.loads(child.conn.recv_bytes())  # the replies sent together
            except (EOFError, OSError):
                break
            with child.lock:
                waiters = [child.pending.pop(reply.request_id, None) for reply in batch]
            for waiter, reply in zip(waiters, batch, strict=True):
                if waiter is not None:
                    waiter.set(reply)  # a submitted attempt's ``done`` runs here
        with child.lock:
            child.alive = False
            orphans = list(child.pending.values())
            child.pending.clear()
        for waiter in orphans:
            waiter.set(None)
        exitcode = child.process.wait()
        child.close_conn()
        if self._closed:
            return
        # A child that dies young (cannot start, say) is restarted after a pause that doubles, up to 30 s:
        # meanwhile its share of the attempts fail fast and are retried, instead of a restart loop.
        lived = time.monotonic() - child.started
        self._restart_delay = 0.0 if lived > 30 else min(30.0, max(0.5, self._restart_delay * 2))
        log.error(
            "transport.child_died",
            extra=fields(index=index, exitcode=exitcode, restart_in_s=self._restart_delay),
        )
        if self._stopped.wait(self._restart_delay):
            return
        [fresh] = _Child.start(self._allowed, self._threads, self._nice)
        with self._restart_lock:
            if not self._closed:
                self._children[index] = self._watch(index, fresh)
                return
        fresh.close_conn()  # close() went past this slot meanwhile: the new child sees EOF and exits
        fresh.process.wait(30)

    def _dispatch(self, message: Callable[[int], Request], entry: _Waiter | _Completion) -> str | None:
        """Send one request to a child (round robin), its reply to go to ``entry``; a string says why it
        could not be sent (``entry`` is then not registered). ``message`` builds the request from its id."""
        children = self._children
        child = children[next(self._next) % len(children)]
        request_id = next(self._ids)
        data = pickle.dumps(message(request_id), _PROTOCOL)
        with child.lock:
            if not child.alive:
                return "delivery process unavailable"
            child.pending[request_id] = entry
        try:
            with child.send_lock:
                child.conn.send_bytes(data)
        except (OSError, ValueError) as exc:
            with child.lock:
                gone = child.pending.pop(request_id, None) is None  # the reader has finished it already
            return None if gone else f"delivery process unavailable: {exc}"
        return None

    def _call(self, message: Callable[[int], Request], timeout_seconds: float) -> Reply | str:
        """Send one request to a child and wait for its reply; a string says why there is none. The child
        answers every request within its timeout; waiting is bounded all the same (a hung child must not
        hold a worker for good)."""
        waiter = _Waiter()
        if (problem := self._dispatch(message, waiter)) is not None:
            return problem
        reply = waiter.wait(_reply_grace(timeout_seconds))
        if reply is not None:
            return reply
        if self._forget(waiter):
            return "no answer from the delivery process in time"
        return "delivery process exited during the attempt"

    def _forget(self, entry: _Waiter | _Completion) -> bool:
        """Take ``entry`` out of its child's requests in flight; False when a reply (or the child's death)
        got to it first."""
        for child in self._children:
            with child.lock:
                for request_id, pending in child.pending.items():
                    if pending is entry:
                        del child.pending[request_id]
                        return True
        return False

    def send(self, request: OutboundRequest) -> AttemptRecord:
        """Make one attempt in a child process and wait for it; never raises for delivery problems."""
        started_at = time.time()
        r = request
        reply = self._call(
            lambda i: AttemptRequest(i, r.url, r.body, r.headers, r.timeout_seconds, r.basic_auth),
            request.timeout_seconds,
        )
        if isinstance(reply, str):
            return AttemptRecord(started_at, time.time() - started_at, error=reply)
        assert isinstance(reply, AttemptReply)
        return _record_from(reply)

    def submit(self, request: OutboundRequest, done: Callable[[AttemptRecord], None]) -> None:
        """Make one attempt in a child process without waiting: ``done(record)`` is called exactly once, on
        the reply reader's thread (or on this one, when the attempt could not be sent). No thread waits
        for the reply: the parent holds no thread per attempt in flight. Never raises for delivery
        problems; a child that does not answer in time is found by the sweeper."""
        r = request
        entry = _Completion(done, time.time(), time.monotonic() + _reply_grace(r.timeout_seconds))
        try:
            problem = self._dispatch(
                lambda i: AttemptRequest(i, r.url, r.body, r.headers, r.timeout_seconds, r.basic_auth),
                entry,
            )
        except Exception as exc:  # a bug: named by type only (a message could quote a secret)
            problem = f"internal error in the dispatcher ({type(exc).__name__})"
        if problem is not None:
            entry.fail(problem)

    def _sweep(self) -> None:
        """Every second: fail the submitted attempts whose child has not answered in time (a hung child)."""
        while not self._stopped.wait(1.0):
            now = time.monotonic()
            late: list[_Completion] = []
            for child in list(self._children):
                with child.lock:
                    for request_id, entry in list(child.pending.items()):
                        if isinstance(entry, _Completion) and entry.deadline <= now:
                            del child.pending[request_id]
                            late.append(entry)
            for entry in late:
                entry.fail("no answer from the delivery process in time")

    def fetch_token(self, auth: TokenAuth, password: str, timeout_seconds: float) -> str:
        """The token flow, in a child; DeliveryError when it fails (the message holds no secret)."""
        reply = self._call(lambda i: TokenRequest(i, auth, password, timeout_seconds), timeout_seconds)
        if isinstance(reply, str):
            raise DeliveryError(f"token endpoint {auth.url}: {reply}")
        assert isinstance(reply, TokenReply)
        if reply.error is not None:
            raise DeliveryError(reply.error)
        return str(reply.token)

    def post_json(self, url: str, payload: dict[str, Any], timeout_seconds: float) -> AttemptRecord:
        return self.send(json_request(url, payload, timeout_seconds))

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children]

    def close(self, timeout_seconds: float = 30.0) -> None:
        """Stop the children once their attempts in flight are done (killed after ``timeout_seconds``)."""
        with self._restart_lock:
            self._closed = True
        self._stopped.set()
        for child in self._children:
            # A message, not a close: closing an fd another thread is reading does not wake the reader. A
            # sender stuck on a child that stopped reading holds the lock: that child is then killed below.
            if child.send_lock.acquire(timeout=1.0):
                try:
                    with contextlib.suppress(OSError, ValueError):
                        child.conn.send_bytes(_STOP)
                finally:
                    child.send_lock.release()
            else:
                child.process.kill()
        for child in self._children:
            try:
                child.process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(5)
            child.close_conn()

    def __enter__(self) -> ProcessClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: ``dispatch run --delivery-nice``'s default. Acknowledgements are what a producer waits for; attempts are
#: asynchronous by contract. Priority is per thread: the kernel weighs each runnable attempt thread against
#: the ingest threads (weights 1024 at nice 0, 110 at 10, 15 at 19), and at 10 the eight to ten attempt
#: threads runnable at once on a fast endpoint outweighed the committer (measured: it waited for a core as
#: long as it ran). ``bench/ingest.py`` with ``--ingest-process``: 0.69x and 0.72x of idle ingest at 19
#: against 0.54x and 0.56x at 10, deliveries going on meanwhile at 685-713/s against 914-955/s.
DEFAULT_DELIVERY_NICE = 19


def _reply_grace(timeout_seconds: float) -> float:
    """How long the parent waits for a child's reply at most: the child bounds every attempt by its
    timeout, so this only catches a hung child."""
    return timeout_seconds * 3 + 30


def default_processes() -> int:
    """One delivery process per spare core, at least four, at most eight. More processes than cores: a
    child is bound by its own interpreter lock before the cores are (profiled: one child at 90% of a core,
    the main process at 60%; a second child raised throughput by a third on two cores), and with hundreds
    of attempts waiting on slow receivers each child's threads contend for its lock (four children on two
    cores delivered about a fifth more than two to receivers 50-200 ms away). Forked from the first, each
    further child costs about 4 MB at rest."""
    return max(4, min(8, (os.cpu_count() or 2) - 1))


if __name__ == "__main__":
    sys.exit(_child_main())
