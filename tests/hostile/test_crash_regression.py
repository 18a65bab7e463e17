"""Crash regression (issue #9, acceptance 2): kill -9 at random moments, SIGTERM under load, a killed delivery
child and a full disk lose no acknowledged event.

Every test runs real ``dispatch run`` processes against a real receiver on 127.0.0.1; nothing leaves loopback.
An event counts as delivered once the receiver has answered one of its attempts with a 2xx (at-least-once:
duplicates are allowed).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.e2e import harness
from tests.e2e.harness import DispatchProcess, Received, Receiver, event_line, write_webhook
from tests.requires import require

# Retries one second apart, many of them: a 500 or a killed attempt is retried soon, and never dies out.
QUICK_RETRY = {"choice": "schedule", "kwargs": {"delays": [1]}, "max_attempts": 30}
TIMEOUT_SECONDS = 5


class Delivered:
    """The webhook-ids the receiver answered with a 2xx at least once, and how many 5xx it gave."""

    def __init__(self, receiver: Receiver) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.ids: set[str] = set()
        self.errors = 0
        self._next_status = receiver.next_status
        self._record = receiver.record
        # The handler asks for the status, then records the request, on the same thread.
        receiver.next_status = self._status  # type: ignore[method-assign]
        receiver.record = self._recorded  # type: ignore[method-assign]

    def _status(self, path: str) -> int:
        status = self._next_status(path)
        self._local.status = status
        return status

    def _recorded(self, item: Received) -> None:
        with self._lock:
            if 200 <= self._local.status < 300:
                self.ids.add(item.headers["webhook-id"])
            else:
                self.errors += 1
        self._record(item)

    def missing(self, acked: set[str]) -> set[str]:
        """The acknowledged uuids not delivered yet."""
        with self._lock:
            return acked - self.ids


class Streamer:
    """A client thread streaming events over one connection, in groups of ``group`` lines ``pace_seconds``
    apart (a steady load, not a flood the receiver needs minutes to drain), until stopped or cut off; it
    keeps every uuid acknowledged ok and every rejection."""

    def __init__(
        self,
        socket_path: Path,
        new_uuid: Callable[[], str],
        group: int = 10,
        pace_seconds: float = 0.01,
        **extra: Any,
    ) -> None:
        self.socket_path = socket_path
        self.new_uuid = new_uuid
        self.group = group
        self.pace_seconds = pace_seconds
        self.extra = extra
        self.acked: list[str] = []
        self.rejected: list[dict[str, Any]] = []
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(30)
                s.connect(str(self.socket_path))
                reader = s.makefile("rb")
                while not self.stop.wait(self.pace_seconds):
                    s.sendall(
                        b"".join(event_line(uuid=self.new_uuid(), **self.extra) for _ in range(self.group))
                    )
                    self.sent += self.group
                    for _ in range(self.group):
                        line = reader.readline()
                        if not line:
                            return
                        ack = json.loads(line)
                        if ack.get("ok"):
                            self.acked.append(ack["uuid"])
                        else:
                            self.rejected.append(ack)
        except OSError:
            return  # the dispatcher died or stopped: what was acknowledged is all that counts

    def finish(self) -> None:
        """Stop after the group in flight and wait for the thread."""
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the streaming client did not finish"


def _start(processes: list[DispatchProcess], config: Path, state: Path, name: str) -> DispatchProcess:
    proc = DispatchProcess(config, state, socket_path=state.parent / f"{name}.sock")
    processes.append(proc)
    return proc


def _transport_children(pid: int) -> set[int]:
    """Pids of the ``python -P -m dispatcher.transport`` children of ``pid`` (read from /proc)."""
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            continue
        for child in pids:
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"dispatcher.transport" in argv and b"-P" in argv:
                found.add(child)
    return found


def _wait_delivered(delivered: Delivered, acked: set[str], timeout: float = 60.0) -> None:
    try:
        wait_until(lambda: not delivered.missing(acked), timeout=timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(
            f"{len(delivered.missing(acked))} of {len(acked)} acknowledged events lost"
        ) from None


def _write_quick_webhook(config_dir: Path, name: str, url: str) -> None:
    """A webhook with the short timeout and the one-second retries every test here uses."""
    write_webhook(
        config_dir, name, url, config={"timeout": TIMEOUT_SECONDS}, retry_countdown_config=QUICK_RETRY
    )


def test_kill_minus_nine_at_random_moments_loses_no_acknowledged_event(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """Three kill -9s at seeded-random moments while a client streams and retries of 500s are due, each
    followed by a restart on the same --state: every event acknowledged ok is delivered in the end."""
    seed = int(os.environ.get("CRASH_SEED", secrets.randbits(32)))
    print(f"crash regression seed: CRASH_SEED={seed}")
    rng = random.Random(seed)
    receiver.respond("/erp", *([500, 200, 200] * 2000), 200)
    delivered = Delivered(receiver)
    _write_quick_webhook(config_dir, "erp", receiver.url("/erp"))
    state = tmp_path / "state"
    acked: set[str] = set()
    for round_no in range(3):
        proc = _start(processes, config_dir, state, f"round{round_no}")
        stream = Streamer(proc.socket_path, lambda: f"{rng.getrandbits(128):032x}")
        # The kill lands once this round has had this many acknowledgements and attempts.
        moment, attempts = rng.randint(30, 300), len(receiver.requests) + rng.randint(5, 100)
        wait_until(
            lambda: len(stream.acked) >= moment and len(receiver.requests) >= attempts,  # noqa: B023
            timeout=30,
        )
        proc.kill9()
        stream.thread.join(30)
        assert not stream.thread.is_alive()
        acked |= set(stream.acked)
        print(f"round {round_no}: killed after {len(stream.acked)} acks, {len(receiver.requests)} attempts")
    assert delivered.errors > 0, "500s must have put retries in flight before the kills"
    final = _start(processes, config_dir, state, "final")
    _wait_delivered(delivered, acked)
    assert final.proc.poll() is None


def test_sigterm_under_load_exits_zero_in_time_and_loses_nothing(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """SIGTERM while a client streams and attempts to a receiver answering after 0.2 s are in flight: exit 0
    within the longest timeout plus 2 s, and after a restart every acknowledged event is delivered."""
    receiver.delay_seconds["/slow"] = 0.2
    delivered = Delivered(receiver)
    _write_quick_webhook(config_dir, "slow", receiver.url("/slow"))
    state = tmp_path / "state"
    proc = _start(processes, config_dir, state, "first")
    stream = Streamer(proc.socket_path, lambda: secrets.token_hex(16))
    wait_until(lambda: len(stream.acked) >= 200 and len(receiver.on("/slow")) >= 5, timeout=30)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    try:
        code = proc.proc.wait(TIMEOUT_SECONDS + 2)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within {TIMEOUT_SECONDS + 2} s of SIGTERM:\n{proc.logs()}") from None
    assert code == 0, proc.logs()
    print(f"SIGTERM to exit: {time.monotonic() - started:.2f} s")
    stream.thread.join(30)
    acked = set(stream.acked)
    assert len(acked) > len(delivered.ids), "the stop must leave acknowledged events undelivered"
    receiver.delay_seconds.pop("/slow")
    final = _start(processes, config_dir, state, "second")
    _wait_delivered(delivered, acked)
    assert final.proc.poll() is None


def test_a_killed_delivery_child_is_replaced_and_loses_nothing(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """kill -9 of a delivery child while attempts are in flight: it is replaced, the dispatcher stays up and
    keeps delivering, and every acknowledged event is delivered."""
    receiver.delay_seconds["/erp"] = 0.02
    delivered = Delivered(receiver)
    _write_quick_webhook(config_dir, "erp", receiver.url("/erp"))
    proc = _start(processes, config_dir, tmp_path / "state", "main")
    stream = Streamer(proc.socket_path, lambda: secrets.token_hex(16))
    wait_until(lambda: len(stream.acked) >= 200 and len(receiver.on("/erp")) >= 20, timeout=30)
    before = _transport_children(proc.proc.pid)
    assert before, "the dispatcher must have delivery children"
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in _transport_children(proc.proc.pid), timeout=15)
    wait_until(lambda: len(_transport_children(proc.proc.pid) - before) >= 1, timeout=30)
    assert len(_transport_children(proc.proc.pid)) == len(before), "the dead child must be replaced"
    after_kill = len(stream.acked)
    wait_until(lambda: len(stream.acked) >= after_kill + 100, timeout=30)
    stream.finish()
    acked = set(stream.acked)
    _wait_delivered(delivered, acked)
    assert set(stream.acked[after_kill:]) <= delivered.ids, "deliveries must go on after the child died"
    assert proc.proc.poll() is None, proc.logs()


@pytest.fixture
def tiny_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A --state directory that the dispatcher sees as a 4 MiB tmpfs, 3 MiB of it taken by ``ballast``, in a
    private mount namespace (root only); the path to give as --state."""
    require(os.geteuid() == 0 and shutil.which("unshare") is not None, "root and unshare (a private tmpfs)")
    state = tmp_path / "state"
    state.mkdir()
    script = (
        f"mount -t tmpfs -o size=4m tmpfs {shlex.quote(str(state))}"
        f' && fallocate -l 3m {shlex.quote(str(state / "ballast"))} && exec "$@"'
    )
    command = harness.dispatch_command()
    monkeypatch.setattr(
        harness, "dispatch_command", lambda: ["unshare", "-m", "sh", "-c", script, "sh", *command]
    )
    yield state


def test_a_full_disk_refuses_events_until_space_is_freed_and_loses_nothing(
    receiver: Receiver, config_dir: Path, tiny_disk: Path, processes: list[DispatchProcess]
) -> None:
    """With --state on a full tmpfs lines are answered ok false with "retry" (never ok) and the process stays
    up, and attempts go on; once space is freed new events are accepted, and every event acknowledged ok is
    delivered (the outcomes of attempts made while full included)."""
    receiver.respond("/erp", 500)  # until space is freed: retries are attempted, and recorded, while full
    delivered = Delivered(receiver)
    _write_quick_webhook(config_dir, "erp", receiver.url("/erp"))
    proc = _start(processes, config_dir, tiny_disk, "main")
    ballast = Path(f"/proc/{proc.proc.pid}/root") / tiny_disk.relative_to("/") / "ballast"
    assert ballast.stat().st_size == 3 * 1024 * 1024, "the ballast must sit on the dispatcher's tmpfs"
    assert not (tiny_disk / "ballast").exists(), "the tmpfs must be private to the dispatcher"
    padding = "x" * 16_000
    stream = Streamer(proc.socket_path, lambda: secrets.token_hex(16), group=5, payload={"pad": padding})
    wait_until(lambda: len(stream.rejected) >= 20, timeout=60)
    stream.finish()
    seen = len(receiver.requests)
    wait_until(
        lambda: len(receiver.requests) >= seen + 3, timeout=15
    )  # attempts whose outcome cannot be stored
    before = set(stream.acked)
    assert len(before) >= 5, "events must be accepted before the disk is full"
    assert all(not r["ok"] and "retry" in r["error"] for r in stream.rejected), stream.rejected[:3]
    during = proc.publish(
        [event_line(uuid=secrets.token_hex(16), payload={"pad": padding}) for _ in range(10)]
    )
    assert len(during) == 10 and all(not a["ok"] and "retry" in a["error"] for a in during), during
    assert proc.proc.poll() is None, proc.logs()
    ballast.unlink()
    receiver.respond("/erp", 200)
    after: list[str] = []

    def accepted_again() -> bool:
        acks = proc.publish([event_line(uuid=secrets.token_hex(16)) for _ in range(5)])
        after.extend(a["uuid"] for a in acks if a.get("ok"))
        return len(after) >= 5

    wait_until(accepted_again, timeout=30, interval=0.2)
    _wait_delivered(delivered, before | set(after))
    assert proc.proc.poll() is None, proc.logs()
