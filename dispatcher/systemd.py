"""systemd integration without a dependency: socket activation and the notify protocol.

- Socket activation (``sd_listen_fds``): systemd (or ``systemd-socket-activate``) passes listening sockets as
  file descriptors 3, 4, ... and sets ``LISTEN_FDS`` (how many) and ``LISTEN_PID`` (for which process; a
  variable meant for another process, e.g. inherited from a parent, is ignored). The variables are removed
  once read, so processes we start never mistake them for their own.
- Notify (``sd_notify``): newline-separated ``KEY=VALUE`` datagrams to the AF_UNIX socket in
  ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). ``READY=1`` once the store is open
  and a valid table is loaded, ``RELOADING=1`` (with ``MONOTONIC_USEC``, as ``Type=notify-reload`` wants) then
  ``READY=1`` around a reload, ``STOPPING=1`` when shutdown begins, and ``WATCHDOG=1`` every half
  ``WATCHDOG_USEC`` from the main loop. Without ``NOTIFY_SOCKET`` every call is a no-op; a failed send is
  logged once and never stops the dispatcher.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

from dispatcher.errors import SocketPathError
from dispatcher.logs import fields, get_logger

log = get_logger("systemd")

#: The first file descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


@dataclass(frozen=True)
class Activation:
    """What ``LISTEN_FDS``/``LISTEN_PID`` say: the passed descriptors and their names (may be empty)."""

    fds: tuple[int, ...]
    names: tuple[str, ...] = ()


def parse_activation(environ: MutableMapping[str, str], pid: int) -> Activation | None:
    """The sockets passed to process ``pid``, or None when none were (or they were meant for another pid).

    Raises SocketPathError for variables that are set for this process but malformed.
    """
    raw_fds, raw_pid = environ.get("LISTEN_FDS"), environ.get("LISTEN_PID")
    if raw_fds is None:
        return None
    if raw_pid is not None and raw_pid.strip() != str(pid):
        return None  # set for another process (we inherited it): not ours
    try:
        count = int(raw_fds)
    except ValueError:
        raise SocketPathError(f"LISTEN_FDS={raw_fds!r} is not a number") from None
    if count < 0:
        raise SocketPathError(f"LISTEN_FDS={raw_fds!r} is negative")
    names = tuple(n for n in environ.get("LISTEN_FDNAMES", "").split(":") if n)
    return Activation(tuple(range(LISTEN_FDS_START, LISTEN_FDS_START + count)), names)


def is_activated(environ: MutableMapping[str, str], pid: int | None = None) -> bool:
    """Whether sockets were passed to this process (``dispatch run`` then needs no ``--socket``)."""
    try:
        activation = parse_activation(environ, os.getpid() if pid is None else pid)
    except SocketPathError:
        return True  # malformed but meant for us: take_listener reports it
    return activation is not None and bool(activation.fds)


def take_listener(environ: MutableMapping[str, str], pid: int | None = None) -> socket.socket:
    """The one listening Unix stream socket passed by systemd, as a socket object (not inheritable).

    Removes the ``LISTEN_*`` variables from ``environ``. Raises SocketPathError unless exactly one passed
    descriptor is a listening AF_UNIX SOCK_STREAM socket.
    """
    activation = parse_activation(environ, os.getpid() if pid is None else pid)
    for name in _LISTEN_VARS:
        environ.pop(name, None)
    if activation is None or not activation.fds:
        raise SocketPathError("no socket was passed (LISTEN_FDS is unset, 0, or meant for another process)")
    if len(activation.fds) != 1:
        raise SocketPathError(
            f"{len(activation.fds)} sockets were passed (LISTEN_FDS); dispatch run listens on exactly one"
        )
    fd = activation.fds[0]
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SocketPathError(f"passed file descriptor {fd} is not a socket: {exc.strerror}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()  # not ours to close: leave the descriptor as it was
        raise SocketPathError(f"passed file descriptor {fd} is not a Unix stream socket (ListenStream=PATH)")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise SocketPathError(f"passed socket {fd} is not listening (Accept=no is required)")
    sock.set_inheritable(False)
    return sock


def socket_name(sock: socket.socket) -> str:
    """A passed socket's address for logs: its path, ``@name`` in the abstract namespace, or ``<unnamed>``."""
    name = sock.getsockname()
    if isinstance(name, bytes):
        return "@" + name[1:].decode(errors="replace") if name else "<unnamed>"
    return str(name) or "<unnamed>"


def watchdog_interval_seconds(environ: MutableMapping[str, str], pid: int | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``WATCHDOG_USEC`` (as sd_watchdog_enabled advises), or None
    when the watchdog is off or meant for another process."""
    raw = environ.get("WATCHDOG_USEC")
    wpid = environ.get("WATCHDOG_PID")
    if raw is None or (wpid is not None and wpid.strip() != str(os.getpid() if pid is None else pid)):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("systemd.bad_watchdog_usec", extra=fields(value=raw))
        return None
    return usec / 2_000_000 if usec > 0 else None


def _address(notify_socket: str) -> str | bytes:
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()  # abstract namespace
    return notify_socket


class Notifier:
    """Sends notify-protocol messages to ``NOTIFY_SOCKET`` (a no-op when unset). ``close()`` when done."""

    def __init__(self, environ: MutableMapping[str, str], pid: int | None = None) -> None:
        target = environ.get("NOTIFY_SOCKET") or None
        self._address = _address(target) if target else None
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._lock = threading.Lock()
        self._warned = False
        self.watchdog_seconds = watchdog_interval_seconds(environ, pid)
        self._next_watchdog = 0.0
        # Not for the processes we start (delivery children): they are not the service's main process.
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            environ.pop(name, None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; returns whether it was sent."""
        if self._sock is None or self._address is None:
            return False
        data = "\n".join(assignments).encode()
        with self._lock:
            try:
                self._sock.sendto(data, self._address)
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("systemd.notify_failed", extra=fields(error=exc.strerror or str(exc)))
                return False
        return True

    def ready(self, status: str | None = None) -> None:
        """``READY=1``: start-up (or a reload) is complete."""
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    @contextlib.contextmanager
    def reloading(self) -> Iterator[None]:
        """``RELOADING=1`` before the body, ``READY=1`` after it (whether or not the reload applied)."""
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            yield
        finally:
            self.notify("READY=1")

    def stopping(self) -> None:
        """``STOPPING=1``: shutdown has begun."""
        self.notify("STOPPING=1")

    def watchdog_tick(self, now_monotonic: float | None = None) -> bool:
        """Send ``WATCHDOG=1`` if half the watchdog interval has passed since the last one."""
        if self.watchdog_seconds is None:
            return False
        now = time.monotonic() if now_monotonic is None else now_monotonic
        if now < self._next_watchdog:
            return False
        self._next_watchdog = now + self.watchdog_seconds
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
