"""Hostile input, dying threads and stubborn clients against a real ``dispatch run`` process.

Every event goes to a real HTTP receiver on 127.0.0.1; nothing leaves loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dispatcher.supervise import EXIT_INTERNAL_FAILURE
from tests.conftest import wait_until
from tests.e2e.harness import DispatchProcess, Receiver, dispatch_command, event_line, run_cli, write_webhook
from tests.hostile.corpus import PARSE_CORPUS, TOO_LONG
from tests.hostile.fault_launcher import MESSAGE_MARKER
from tests.loopback import free_port

LAUNCHER = Path(__file__).with_name("fault_launcher.py")
HOSTILE = [line for _, line, _ in PARSE_CORPUS] + [TOO_LONG]


def _healthz(port: int) -> tuple[int, str]:
    """GET /healthz on 127.0.0.1 (http.client: no proxy from the environment); (0, error) if unreachable."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    except OSError as exc:
        return 0, str(exc)
    finally:
        conn.close()


def _interleaved() -> tuple[bytes, list[bool]]:
    """Each hostile line followed by a good event; and which lines are good."""
    lines: list[bytes] = []
    good: list[bool] = []
    for i, hostile in enumerate(HOSTILE):
        lines += [hostile + b"\n", event_line(payload={"n": i})]
        good += [False, True]
    return b"".join(lines), good


def _check_acks(acks: list[dict[str, object]], good: list[bool]) -> None:
    assert len(acks) == len(good)
    for number, (ack, ok) in enumerate(zip(acks, good, strict=True), start=1):
        assert ack["ok"] is ok, (number, ack)
        if not ok:
            assert ack["line"] == number


class SteadyClient:
    """A second client sending one good event at a time and waiting for each ack, until stopped."""

    def __init__(self, path: Path) -> None:
        self.acks: list[dict[str, object]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(20)
        self._sock.connect(str(path))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        reader = self._sock.makefile("rb")
        try:
            while not self._stop.is_set():
                self._sock.sendall(event_line(payload={"steady": len(self.acks)}))
                self.acks.append(json.loads(reader.readline()))
        except BaseException as exc:
            self.errors.append(exc)

    def stop(self) -> list[dict[str, object]]:
        self._stop.set()
        self._thread.join(20)
        self._sock.close()
        return self.acks


def test_hostile_lines_on_the_socket_are_rejected_alone_while_others_flow(
    tmp_path: Path, config_dir: Path, receiver: Receiver, processes: list[DispatchProcess]
) -> None:
    """Each hostile line gets its own rejection and the good line after it is delivered; another client's
    acks keep flowing throughout, the committer survives, and /healthz stays 200."""
    write_webhook(config_dir, "erp", receiver.url("/hook"))
    port = free_port()
    proc = DispatchProcess(config_dir, tmp_path / "state", extra_args=["--metrics", f"127.0.0.1:{port}"])
    processes.append(proc)
    steady = SteadyClient(proc.socket_path)
    wait_until(lambda: len(steady.acks) >= 3)
    data, good = _interleaved()
    acks = proc.publish([data], timeout=60)
    _check_acks(acks, good)
    before = len(steady.acks)
    wait_until(lambda: len(steady.acks) >= before + 3)  # still flowing after the hostile client
    steady_acks = steady.stop()
    assert not steady.errors
    assert steady_acks and all(a["ok"] is True for a in steady_acks)
    late = proc.publish([event_line(payload={"late": True})])  # a new connection after it all
    assert late[0]["ok"] is True
    expected = sum(good) + len(steady_acks) + 1
    received = receiver.wait_count("/hook", expected, timeout=60)
    payloads = [r.json()["payload"] for r in received]
    assert sorted(p["n"] for p in payloads if "n" in p) == list(range(len(HOSTILE)))
    assert _healthz(port) == (200, "ok\n")


def test_a_client_flooding_rejected_input_is_slowed_not_cut_off(
    tmp_path: Path, config_dir: Path, receiver: Receiver, processes: list[DispatchProcess]
) -> None:
    """A client sending more rejected input than its budget (4 MiB at once, then 1 MiB/s) is throttled:
    the dispatcher says so, the client still gets one rejection per line on the same connection, and a
    well-behaved client's events keep being acknowledged and delivered meanwhile."""
    write_webhook(config_dir, "erp", receiver.url("/hook"))
    proc = DispatchProcess(config_dir, tmp_path / "state")
    processes.append(proc)
    steady = SteadyClient(proc.socket_path)
    wait_until(lambda: len(steady.acks) >= 3)
    flood = [TOO_LONG + b"\n"] * 7  # 7 MiB of lines over the limit: 3 MiB past the burst
    acks = proc.publish(flood, timeout=60)
    assert [a["ok"] for a in acks] == [False] * len(flood)
    assert all("too long" in str(a["error"]) for a in acks)
    assert "client.throttled" in proc.logs()
    during = len(steady.acks)
    wait_until(lambda: len(steady.acks) >= during + 3)
    steady_acks = steady.stop()
    assert not steady.errors and all(a["ok"] is True for a in steady_acks)
    receiver.wait_count("/hook", len(steady_acks), timeout=60)


def test_hostile_lines_on_stdin_get_one_ack_each_and_the_run_exits_0(
    tmp_path: Path, config_dir: Path, receiver: Receiver, processes: list[DispatchProcess]
) -> None:
    """In --stdin mode the same corpus gets exactly one ack per line, the good events are delivered, and
    the run exits 0 at EOF."""
    write_webhook(config_dir, "erp", receiver.url("/hook"))
    proc = DispatchProcess(config_dir, tmp_path / "state", stdin=True)
    processes.append(proc)
    data, good = _interleaved()
    out, _ = proc.proc.communicate(data, timeout=120)
    assert proc.proc.returncode == 0, proc.logs()
    _check_acks([json.loads(line) for line in out.splitlines()], good)
    receiver.wait_count("/hook", sum(good), timeout=30)


def _launch(target: str, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as stream:
        return subprocess.Popen(
            [sys.executable, str(LAUNCHER), target, "run", *args],
            stdin=subprocess.DEVNULL,
            stdout=stream,
            stderr=stream,
            env={**os.environ, **env},
        )


@pytest.mark.parametrize(
    ("target", "thread", "needs_event"),
    [
        ("dispatcher.scheduler:Scheduler.run_once", "dispatch-scheduler", False),
        ("dispatcher.ingest:Committer._commit", "dispatch-committer", True),
        # A delivery process's reply reader, dying as it starts (supervised like the engine's threads).
        ("dispatcher.transport:ProcessClient._read_replies", "dispatch-replies-", False),
    ],
)
def test_a_dying_internal_thread_turns_healthz_503_and_exits_70(
    tmp_path: Path, config_dir: Path, receiver: Receiver, target: str, thread: str, needs_event: bool
) -> None:
    """An internal thread killed by an exception makes /healthz answer 503 naming the thread and the
    exception type (never its message), and the process exits with code 70 within a few seconds."""
    write_webhook(config_dir, "erp", receiver.url("/hook"))
    port, sock, hold = free_port(), tmp_path / "d.sock", tmp_path / "release"
    args = ["--config", str(config_dir), "--state", str(tmp_path / "state"), "--socket", str(sock)]
    args += ["--allow-cidr", "127.0.0.0/8", "--metrics", f"127.0.0.1:{port}"]
    proc = _launch(target, args, tmp_path / "log", {"HOLD_STOP_UNTIL": str(hold)})
    try:
        if needs_event:  # (a scheduler dying at start-up ends the run before the socket can be used)
            wait_until(lambda: sock.exists() or proc.poll() is not None)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(20)
                client.connect(str(sock))
                client.sendall(event_line())
                ack = json.loads(client.makefile("rb").readline())
            assert ack["ok"] is False and "retry this event" in ack["error"]
        answers: list[tuple[int, str]] = []

        def unhealthy() -> bool:
            answers.append(_healthz(port))
            return answers[-1][0] == 503

        wait_until(unhealthy, timeout=15, interval=0.02)
        body = answers[-1][1]
        assert thread in body and "RuntimeError at " in body
        assert MESSAGE_MARKER not in body
        hold.touch()
        assert proc.wait(timeout=15) == EXIT_INTERNAL_FAILURE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert MESSAGE_MARKER not in (tmp_path / "log").read_text()


def test_a_dying_internal_thread_ends_the_process_unattended(tmp_path: Path, config_dir: Path) -> None:
    """Without anyone watching, a dead scheduler still ends the process with code 70 within seconds."""
    args = ["--config", str(config_dir), "--state", str(tmp_path / "state"), "--socket", str(tmp_path / "s")]
    proc = _launch("dispatcher.scheduler:Scheduler.run_once", args, tmp_path / "log", {})
    try:
        assert proc.wait(timeout=15) == EXIT_INTERNAL_FAILURE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = (tmp_path / "log").read_text()
    assert "dispatch-scheduler" in log and "Traceback" not in log


class StubbornClient:
    """Writes events as fast as it can and never reads an acknowledgement."""

    def __init__(self, path: Path) -> None:
        self.sent = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        chunk = event_line("order.unrouted") * 200
        try:
            while True:
                self._sock.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            return

    def close(self) -> None:
        self._sock.close()


def test_sigterm_exits_0_promptly_whatever_the_clients_do(
    tmp_path: Path, config_dir: Path, receiver: Receiver, processes: list[DispatchProcess]
) -> None:
    """Six clients that keep writing and never read their acks do not hold up SIGTERM: the process exits 0
    within the longest webhook timeout (10 s) plus 2 s, not 5 s per client."""
    write_webhook(config_dir, "erp", receiver.url("/hook"))
    proc = DispatchProcess(config_dir, tmp_path / "state")
    processes.append(proc)
    clients = [StubbornClient(proc.socket_path) for _ in range(6)]
    try:
        # Half a megabyte each is more acks than a socket buffer holds: every acker is stuck in a write.
        wait_until(lambda: all(c.sent >= 512 * 1024 for c in clients), timeout=60)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.proc.wait(timeout=40)
        elapsed = time.monotonic() - started
    finally:
        for c in clients:
            c.close()
    assert code == 0, proc.logs()
    assert elapsed < 12.0 + 3.0  # well before the 30 s six stalled clients took, with slack for a busy box


def test_an_unwritable_state_directory_is_one_line_and_exit_1(tmp_path: Path, config_dir: Path) -> None:
    """A --state that cannot be created (its parent is a file) is a one-line error naming it, exit 1,
    no traceback, in socket and in stdin mode."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    state = blocker / "state"
    for source in (["--socket", str(tmp_path / "s")], ["--stdin"]):
        result = run_cli("run", "--config", str(config_dir), "--state", str(state), *source, input=b"")
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(state) in lines[0] and "not writable" in lines[0]


def test_a_read_only_state_directory_is_one_line_and_exit_1(tmp_path: Path, config_dir: Path) -> None:
    """An existing --state directory the dispatcher cannot write is a one-line error naming it, exit 1.

    Without write permission for an ordinary user; as root (who writes anywhere), on a read-only bind mount
    of the directory in a private mount namespace, as a read-only volume would be."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "dispatch.lock").write_text("")
    args = ["run", "--config", str(config_dir), "--state", str(state), "--stdin"]
    if os.geteuid() == 0:
        mount = f"mount --bind -o ro {state} {state}"
        command = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *dispatch_command(), *args]
        result = subprocess.run(command, input="", capture_output=True, text=True, timeout=60)
    else:
        state.chmod(0o500)
        try:
            result = run_cli(*args, input=b"")
        finally:
            state.chmod(0o700)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(state) in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra", [[], ["--ingest-process"]], ids=["in process", "ingest process"])
def test_lines_at_the_size_limit_are_stored_and_delivered_byte_for_byte(
    tmp_path: Path, config_dir: Path, receiver: Receiver, processes: list[DispatchProcess], extra: list[str]
) -> None:
    """A producer pipelining 40 lines just under the 1 MiB limit (more than one SQL statement's 32 MiB of
    bodies if they share a commit), each holding characters JSON escapes and non-ASCII text, between small
    events: every line is acknowledged ok and every event is delivered with exactly the payload it sent."""
    write_webhook(config_dir, "erp", receiver.url("/hook"))
    proc = DispatchProcess(config_dir, tmp_path / "state", extra_args=extra)
    processes.append(proc)
    filler = 'q"\\<>&\u00e9\u2603\U0001f600\t' * 70_000
    lines = []
    for i in range(40):
        big = event_line(payload={"n": i, "big": filler[: 280_000 + i]})
        assert 900_000 < len(big) < 1 << 20
        lines += [big, event_line(payload={"n": 100 + i})]
    acks = proc.publish(lines, timeout=120)
    assert [a["ok"] for a in acks] == [True] * len(lines)
    received = receiver.wait_count("/hook", len(lines), timeout=120)
    payloads = {r.json()["payload"]["n"]: r.json()["payload"] for r in received}
    assert payloads == {json.loads(line)["payload"]["n"]: json.loads(line)["payload"] for line in lines}
