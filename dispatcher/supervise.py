"""Crash-only supervision: an internal thread that dies unexpectedly is never silent.

Threads started through ``Supervisor.spawn`` run their target inside a wrapper. An exception escaping it,
or a return before ``stopping()`` was called (for threads meant to run until shutdown), records the first
fault: the thread's name and a reason naming the exception's type and where it was raised, never its
message (which could quote an event or a secret). The fault turns ``/healthz`` to 503 and calls
``on_fault``, which makes the main loop stop and exit with ``EXIT_INTERNAL_FAILURE``, so systemd or
Kubernetes restarts the process: nothing acknowledged is lost (the store holds it), and no live process
quietly stops working.

Per-client connection threads are not supervised: a failure there closes that connection only. The
delivery processes' reply readers and sweeper are, started with ``until_stop=False``: they end by design when
a child is restarted or the client closes.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from dispatcher.exitcodes import ExitCode
from dispatcher.logs import fields, get_logger

log = get_logger("supervise")

#: ``dispatch run``'s exit code when an internal thread died (EX_SOFTWARE in sysexits.h).
EXIT_INTERNAL_FAILURE = ExitCode.INTERNAL_FAILURE

#: Starts a named daemon thread running a target and returns it (``Supervisor.spawn`` or ``start_thread``).
Spawn = Callable[[str, Callable[[], None]], threading.Thread]


def start_thread(name: str, target: Callable[[], None]) -> threading.Thread:
    """An unsupervised daemon thread, started (components' default when no supervisor is given)."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def describe(exc: BaseException) -> str:
    """``TypeName at file:line in function`` of the innermost frame: safe to log and show, no message."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    return f"{type(exc).__name__} at {_where(frames[-1])}"


def stack(exc: BaseException) -> str:
    """Every frame of the traceback as ``file:line in function``, innermost last; no values, no message."""
    return " < ".join(_where(f) for f in reversed(traceback.extract_tb(exc.__traceback__)))


def _where(frame: traceback.FrameSummary) -> str:
    return f"{os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}"


@dataclass(frozen=True)
class Fault:
    """Why the process is no longer healthy: which thread, and what happened to it."""

    thread: str
    reason: str

    def __str__(self) -> str:
        return f"{self.thread}: {self.reason}"


class Supervisor:
    """Records the first fault of any supervised thread or callback; ``fault`` is None while healthy."""

    def __init__(self, on_fault: Callable[[], None] = lambda: None) -> None:
        self._on_fault = on_fault
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._stopping = threading.Event()

    @property
    def fault(self) -> Fault | None:
        return self._fault

    def reason(self) -> str | None:
        """The fault as text (for /healthz), or None while healthy."""
        fault = self._fault
        return None if fault is None else str(fault)

    def stopping(self) -> None:
        """Shutdown has begun: threads meant to run until then may now return."""
        self._stopping.set()

    def fail(self, thread: str, reason: str, where: str | None = None) -> None:
        """Record a fault (only the first is kept) and tell the main loop; ``where`` is the stack, logged."""
        with self._lock:
            if self._fault is not None:
                return
            self._fault = Fault(thread, reason)
        log.error("supervise.thread_died", extra=fields(thread=thread, reason=reason, stack=where))
        self._on_fault()

    def spawn(self, name: str, target: Callable[[], None], *, until_stop: bool = True) -> threading.Thread:
        """Start ``target`` in a supervised daemon thread. ``until_stop``: returning before shutdown is a
        fault too (a loop that quietly ended)."""

        def run() -> None:
            try:
                target()
            except BaseException as exc:  # not re-raised: the default hook would print the message too
                self.fail(name, describe(exc), stack(exc))
                return
            if until_stop and not self._stopping.is_set():
                self.fail(name, "stopped unexpectedly")

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def guard(self, name: str, fn: Callable[[], None]) -> Callable[[], None]:
        """``fn``, run on a thread this module does not start (e.g. the watcher's callback): an exception
        escaping it is a fault of ``name`` (not re-raised: the process is stopping anyway)."""

        def guarded() -> None:
            try:
                fn()
            except BaseException as exc:
                self.fail(name, describe(exc), stack(exc))

        return guarded
