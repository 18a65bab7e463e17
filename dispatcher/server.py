"""Event sources: a Unix stream socket (many clients at once) and standard input.

Both run the same loop: read what is available, split into lines, let the ``Ingestor`` commit and answer,
write the acknowledgements. Socket creation is safe: mode 0660 from the first instant (umask around bind), a
stale socket left by a dead process is replaced, and anything else at the path is refused.

At most ``max_connections`` clients are served at once (``dispatcher.caps``): one more gets one line,
``{"ok": false, "error": "too many connections ..."}``, and is closed before any of its input is read, so
none of its events was accepted and all can be sent again.

Shutdown is bounded whatever the clients do: ``SocketServer.close`` stops reading, gives every client one
shared deadline to take the acknowledgements of the lines already read, then shuts the remaining sockets down.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dispatcher.caps import DEFAULT_MAX_CONNECTIONS, ConnectionCap, PeerShares, Refuser
from dispatcher.errors import SocketPathError
from dispatcher.ingest import Ingestor, LineReader
from dispatcher.logs import fields, get_logger
from dispatcher.protocol import connection_refused
from dispatcher.supervise import Spawn, describe, start_thread
from dispatcher.throttle import Budget, PeerBudgets, RejectBudget, RejectLimits

log = get_logger("server")

_READ_SIZE = 1 << 16
_PIPELINE_DEPTH = 16
_ACCEPT_POLL_SECONDS = 0.2
#: After the close deadline, how long handlers get to notice their sockets were shut down.
_FORCED_JOIN_SECONDS = 1.0
#: accept() errors that pass (a client gave up, or descriptors/memory are short for a moment).
_TRANSIENT_ACCEPT_ERRORS = frozenset(
    {errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EINTR}
)
_ACCEPT_BACKOFF_SECONDS = 0.1


def serve_stream(
    read: Callable[[], bytes],
    write: Callable[[bytes], None],
    ingestor: Ingestor,
    stop_reading: Callable[[], None] | None = None,
    reject_limits: RejectLimits | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    budget: Budget | None = None,
) -> int:
    """Serve one NDJSON stream until EOF; returns the number of lines handled.

    Pipelined: while one read's events are being committed, the next reads are parsed and queued (up to
    ``_PIPELINE_DEPTH`` reads ahead), so a client that pipelines gets group commits of many reads at once
    rather than one fsync per read. A second thread writes the acknowledgements, in input order, each only
    once its events are durable. When a write fails (the client went away) it calls ``stop_reading`` so that a
    read waiting for more input returns, and the write's error is raised.

    A stream that sends more rejected input than ``reject_limits`` allow waits before its next read
    (``dispatcher.throttle``): it is slowed, never cut off, and every line still gets its acknowledgement.
    ``sleep(seconds)`` does the waiting; a true result ends it early (the peer hung up, nothing is left to
    read: the next read is the end of the stream).
    ``budget``: the one it spends (its peer's, shared with the peer's other connections); by default a
    budget of its own at ``reject_limits``.
    """
    reader = LineReader(ingestor.max_line_bytes)
    if budget is None:
        budget = RejectBudget(reject_limits or RejectLimits(), clock())
    throttled = False

    def charge(lines: int, size: int) -> None:
        budget.charge(lines, size, clock())

    pending: queue.Queue[Callable[[], bytes] | None] = queue.Queue(_PIPELINE_DEPTH)
    failed: list[BaseException] = []

    def acknowledge() -> None:
        while (answers := pending.get()) is not None:
            if failed:
                continue  # the stream is broken: the events still commit, their acks have nowhere to go
            try:
                write(answers())
            except BaseException as exc:  # re-raised by the reading thread
                failed.append(exc)
                if stop_reading is not None:
                    stop_reading()

    acker = threading.Thread(target=acknowledge, name="dispatch-acks", daemon=True)
    acker.start()
    try:
        while not failed:
            data = read()
            lines = reader.feed(data) if data else reader.finish()
            if lines or reader.discarding:
                if reader.discarding:  # inside an over-long line: what was read of it counts already
                    budget.charge(0, len(data), clock())
                if lines:
                    pending.put(ingestor.start(lines, charge))
            if not data:
                break
            while (wait := budget.wait_seconds(clock())) > 0 and not failed:
                if not throttled:
                    throttled = True
                    log.warning("client.throttled", extra=fields(reason="too much rejected input"))
                if sleep(wait):
                    break  # the peer hung up and nothing is left to read: no input to slow down
    finally:
        pending.put(None)  # acks for every line already read are still written
        acker.join()
    if failed:
        raise failed[0]
    return reader.line_no


def _prepare_path(path: Path) -> None:
    """Remove a stale socket at ``path``; refuse a live one or any other kind of file."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: left by a process that died
        log.info("socket.stale_removed", extra=fields(path=str(path)))
        return
    finally:
        probe.close()
    raise SocketPathError(f"another process is already listening on {path}")


def bind_unix_socket(path: str | Path, mode: int = 0o660) -> socket.socket:
    """A listening Unix stream socket at ``path`` with ``mode``, never briefly wider."""
    target = Path(path)
    _prepare_path(target)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(target))
    except OSError as exc:
        sock.close()
        raise SocketPathError(f"cannot bind {target}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    os.chmod(target, mode)
    sock.listen(128)
    return sock


class SocketServer:
    """Accepts clients on a Unix socket; one thread per client, at most ``max_connections`` at once (past it
    a client is refused and ``on_refused`` called). ``close()`` stops accepting and reading.

    ``listener``: an already bound, listening socket (systemd socket activation); its path is then the
    service manager's, and ``close()`` leaves it in place.
    """

    def __init__(
        self,
        path: str | Path,
        ingestor: Ingestor,
        listener: socket.socket | None = None,
        *,
        spawn: Spawn = start_thread,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        on_refused: Callable[[], None] = lambda: None,
        budgets: PeerBudgets | None = None,
        shares: PeerShares | None = None,
    ) -> None:
        self.path = Path(path)
        self._ingestor = ingestor
        self._spawn = spawn
        shares = shares or PeerShares(max_connections)
        self._cap = ConnectionCap("socket", max_connections, on_refused, shares=shares)
        self._refuser = Refuser()
        self._budgets = budgets or PeerBudgets()
        self._owns_path = listener is None
        self._sock = bind_unix_socket(self.path) if listener is None else listener
        if listener is not None:
            # shutdown() would also shut the service manager's copy (one socket, two descriptors): the
            # accept loop wakes up to see close() instead.
            listener.settimeout(_ACCEPT_POLL_SECONDS)
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._accepter: threading.Thread | None = None
        self._handlers: list[threading.Thread] = []

    def start(self) -> None:
        self._accepter = self._spawn("dispatch-accept", self._accept_loop)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                if self._closed:
                    return
                continue
            except OSError as exc:
                if self._closed or exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                    return  # closed (anything else: the supervisor sees this thread end)
                log.warning("socket.accept_failed", extra=fields(error=exc.strerror or str(exc)))
                time.sleep(_ACCEPT_BACKOFF_SECONDS)  # out of descriptors or memory: let clients finish
                continue
            pid, uid = peer_credentials(conn)
            if (why := self._cap.admit(pid, uid)) is not None:
                self._refuser.refuse(conn, connection_refused(why))
                continue
            with self._lock:
                if self._closed:
                    self._cap.release(pid, uid)
                    conn.close()
                    return
                self._clients.add(conn)
                handler = threading.Thread(
                    target=self._serve, args=(conn, pid, uid), name="dispatch-client", daemon=True
                )
                self._handlers = [t for t in self._handlers if t.is_alive()]
                self._handlers.append(handler)
            handler.start()

    def _serve(self, conn: socket.socket, pid: int | None, uid: int | None) -> None:
        def stop_reading() -> None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)

        try:
            budget = self._budgets.for_peer(pid, uid, time.monotonic())
            serve_stream(
                lambda: conn.recv(_READ_SIZE),
                conn.sendall,
                self._ingestor,
                stop_reading,
                budget=budget,
                sleep=lambda seconds: sleep_unless_hung_up(conn, seconds),
            )
        except OSError as exc:
            log.info("client.disconnected", extra=fields(error=exc.strerror or str(exc)))
        except Exception as exc:  # a bug: it ends this connection only
            log.error("client.failed", extra=fields(error=describe(exc)))
        finally:
            with self._lock:
                self._clients.discard(conn)
            conn.close()
            self._cap.release(pid, uid)

    def close(self, timeout: float = 1.0) -> None:
        """Stop accepting, stop reading from clients; acks for lines already read are still written until one
        deadline shared by every client (``timeout`` from now), then the sockets still open are shut down."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            clients = list(self._clients)
            handlers = list(self._handlers)
        self._refuser.close()
        if self._owns_path:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        elif self._accepter is not None:
            self._accepter.join(max(0.0, deadline - time.monotonic()))
        self._sock.close()
        for conn in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
        for handler in handlers:
            handler.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            stuck = list(self._clients)  # e.g. clients that never read their acks
        if stuck:
            log.warning("shutdown.clients_cut_off", extra=fields(clients=len(stuck)))
            for conn in stuck:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            forced = time.monotonic() + _FORCED_JOIN_SECONDS
            for handler in handlers:
                handler.join(max(0.0, forced - time.monotonic()))
        if self._owns_path:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


# The peer closed, or shut down its writing half (POLLRDHUP is Linux's; elsewhere only a full hang-up).
_HANGUP_EVENTS = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def sleep_unless_hung_up(conn: socket.socket, seconds: float) -> bool:
    """Wait ``seconds``, or less when the peer hangs up with nothing left unread: then return True. A peer
    that shut down its writing half after sending more is still waited for (what it sent is still read at
    the throttle's pace, and it still gets every acknowledgement)."""
    deadline = time.monotonic() + seconds
    poller = select.poll()
    poller.register(conn, _HANGUP_EVENTS)
    if poller.poll(max(0.0, seconds) * 1000):
        try:
            if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                return True  # end of stream, nothing before it
        except BlockingIOError:
            pass
        except OSError:
            return True  # reset by the peer: nothing more will be read either
        time.sleep(max(0.0, deadline - time.monotonic()))  # input left to read: the wait holds
    return False


def peer_credentials(conn: socket.socket) -> tuple[int | None, int | None]:
    """(pid, uid) of the process that connected, as the kernel recorded them at connect(); (None, None)
    where the platform does not say (``SO_PEERCRED`` is Linux's)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None, None
    try:
        pid, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))
    except (OSError, struct.error):
        return None, None
    return pid, uid


def serve_stdin(ingestor: Ingestor, fd_in: int = 0, fd_out: int = 1) -> int:
    """Serve standard input until EOF; acknowledgements go to standard output."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd_out, view)
            view = view[n:]

    stopped = threading.Event()

    def read() -> bytes:
        # select first: a read blocked on an idle stdin could not be woken when standard output breaks.
        while not stopped.is_set():
            ready, _, _ = select.select([fd_in], [], [], 0.2)
            if ready:
                return os.read(fd_in, _READ_SIZE)
        return b""

    return serve_stream(read, write, ingestor, stopped.set)
