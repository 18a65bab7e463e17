"""The socket server under faults: transient accept errors pass, a dead accepter is a supervisor fault."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

from dispatcher.config import Snapshot
from dispatcher.ingest import Committer, Ingestor
from dispatcher.metrics import Metrics
from dispatcher.server import SocketServer
from dispatcher.store.memory import MemoryStore
from dispatcher.supervise import Supervisor
from reconciler.routing import build_routing_table
from tests.dispatcher.intakes import NoIntake


class FlakyListener:
    """A listening socket whose accept() first fails with ``errors``, then works."""

    def __init__(self, real: socket.socket, errors: list[int]) -> None:
        self._real = real
        self._errors = errors

    def accept(self) -> tuple[socket.socket, Any]:
        if self._errors:
            code = self._errors.pop(0)
            raise OSError(code, "injected")
        return self._real.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _server(tmp_path: Path, errors: list[int], supervisor: Supervisor) -> tuple[SocketServer, Committer]:
    store = MemoryStore()
    snapshot = Snapshot(build_routing_table([], "rev-1"), {}, "rev-1")
    committer = Committer(store, time.time, NoIntake(), Metrics())
    ingestor = Ingestor(committer, lambda: snapshot, Metrics(), 1 << 20)
    server = SocketServer(tmp_path / "s.sock", ingestor, spawn=supervisor.spawn)
    server._sock = FlakyListener(server._sock, errors)  # type: ignore[assignment]
    return server, committer


def test_transient_accept_errors_do_not_stop_accepting(tmp_path: Path) -> None:
    """Running out of descriptors for a moment (EMFILE, ECONNABORTED) is logged and accepting goes on."""
    supervisor = Supervisor()
    server, committer = _server(tmp_path, [errno.EMFILE, errno.ECONNABORTED], supervisor)
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(str(tmp_path / "s.sock"))
            client.sendall(b'{"event":{"type":"package.created"}}\n')
            ack = json.loads(client.makefile("rb").readline())
        assert ack["ok"] is True
        assert supervisor.fault is None
    finally:
        supervisor.stopping()
        server.close()
        committer.close()


def test_an_accepter_that_ends_before_shutdown_is_a_fault(tmp_path: Path) -> None:
    """Any other accept error ends the accept thread, and the supervisor reports it rather than the
    process quietly accepting nobody."""
    failed = threading.Event()
    supervisor = Supervisor(on_fault=failed.set)
    server, committer = _server(tmp_path, [errno.EBADF], supervisor)
    server.start()
    try:
        assert failed.wait(10)
        fault = supervisor.fault
        assert fault is not None and fault.thread == "dispatch-accept"
        assert fault.reason == "stopped unexpectedly"
    finally:
        supervisor.stopping()
        server.close()
        committer.close()
