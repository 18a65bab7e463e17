"""End to end: the event socket served by an ingest process forked from ``dispatch run``
(``dispatcher.ingest_process``): acks, routing after a reload, metrics, crash-only supervision both ways."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from tests.e2e.harness import DispatchProcess, Receiver, event_line, wait_until, write_webhook
from tests.loopback import dispatch_command, http_get


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(processes: list[DispatchProcess], config: Path, tmp_path: Path, *extra: str) -> DispatchProcess:
    proc = DispatchProcess(config, tmp_path / "state", extra_args=["--ingest-process", *extra])
    processes.append(proc)
    return proc


def _ingest_pid(proc: DispatchProcess) -> int:
    """The ingest process's pid, as the dispatcher logs it once the child listens."""
    found: list[int] = []

    def logged() -> bool:
        found[:] = [int(m) for m in re.findall(r"ingest\.process_started pid=(\d+)", proc.logs())]
        return bool(found)

    wait_until(logged, timeout=10)
    return found[0]


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _metric(port: int, name: str) -> float:
    for line in http_get(port, "/metrics").decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_forked_ingest_process_acks_and_the_parent_delivers_with_exact_metrics(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """The socket is served by a child of the dispatcher (not the dispatcher itself); what it acknowledges is
    delivered by the parent, and a /metrics scrape right after the acks already counts every one of them."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    port = _port()
    proc = _start(processes, config_dir, tmp_path, "--metrics", f"127.0.0.1:{port}")
    pid = _ingest_pid(proc)
    assert pid != proc.proc.pid and _parent_of(pid) == proc.proc.pid
    acks = proc.publish([event_line() for _ in range(5)] + [b"not json\n"])
    assert [a["ok"] for a in acks] == [True] * 5 + [False]
    assert all(a["deliveries"] == 1 for a in acks[:5])
    assert _metric(port, "dispatch_events_accepted_total") == 5
    assert _metric(port, "dispatch_events_rejected_total") == 1
    got = receiver.wait_count("/erp", 5)
    assert sorted(r.json()["event"]["uuid"] for r in got) == sorted(a["uuid"] for a in acks[:5])


def test_the_ingest_process_routes_with_the_table_of_the_latest_reload(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A webhook added while running is routed to by the ingest process (the parent sends the new table)."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    proc = _start(processes, config_dir, tmp_path)
    _ingest_pid(proc)
    assert proc.publish([event_line("invoice.paid")])[0]["deliveries"] == 0
    write_webhook(config_dir, "billing", receiver.url("/billing"), event_type=["invoice.paid"])

    def routed() -> bool:
        return bool(proc.publish([event_line("invoice.paid")])[0]["deliveries"] == 1)

    wait_until(routed, timeout=15, interval=0.2)
    receiver.wait_count("/billing", 1)


def test_a_killed_ingest_process_makes_the_dispatcher_exit_70_and_nothing_acknowledged_is_lost(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """kill -9 of the ingest process is a fault of the whole dispatcher (crash-only: exit 70, for systemd or
    Kubernetes to restart); the restarted dispatcher delivers what the dead child had acknowledged."""
    receiver.respond("/erp", 503)  # every attempt fails: the deliveries are still pending at the kill
    retry = {"choice": "schedule", "kwargs": {"delays": [1]}, "max_attempts": 50}
    write_webhook(config_dir, "erp", receiver.url("/erp"), retry_countdown_config=retry)
    proc = _start(processes, config_dir, tmp_path)
    pid = _ingest_pid(proc)
    acks = proc.publish([event_line() for _ in range(3)])
    assert all(a["ok"] for a in acks)
    os.kill(pid, signal.SIGKILL)
    assert proc.proc.wait(15) == 70
    assert "ingest process" in proc.logs() and "dispatch.failed" in proc.logs()
    receiver.respond("/erp", 200)
    before = len(receiver.on("/erp"))
    _start(processes, config_dir, tmp_path)  # the restart systemd or Kubernetes would make
    uuids = {a["uuid"] for a in acks}

    def delivered_after_restart() -> bool:
        return uuids <= {r.json()["event"]["uuid"] for r in receiver.on("/erp")[before:]}

    wait_until(delivered_after_restart, timeout=20)


def test_killing_the_dispatcher_kills_its_ingest_process(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """kill -9 of the dispatcher leaves no ingest process behind to hold the socket (PR_SET_PDEATHSIG, or
    the end of its socket pair)."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    proc = _start(processes, config_dir, tmp_path)
    pid = _ingest_pid(proc)
    proc.kill9()
    wait_until(lambda: not _alive(pid), timeout=5)


def test_sigterm_sent_to_the_ingest_process_alone_stops_the_dispatcher_cleanly(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """systemd signals the whole control group: a SIGTERM that reaches the ingest process is passed to the
    parent, which stops everything in its order and exits 0."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    proc = _start(processes, config_dir, tmp_path)
    pid = _ingest_pid(proc)
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    assert proc.proc.wait(15) == 0
    assert time.monotonic() - started < 10
    assert 'via="ingest process"' in proc.logs()
    assert not _alive(pid)


def test_a_dispatcher_that_fails_to_start_leaves_no_ingest_process(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A second dispatcher on a state directory in use exits with its error, and its forked child with it."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    _start(processes, config_dir, tmp_path)
    second = tmp_path / "second.sock"
    command = [*dispatch_command(), "run", "--config", str(config_dir), "--state", str(tmp_path / "state")]
    command += ["--socket", str(second), "--allow-cidr", "127.0.0.0/8", "--ingest-process"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "another dispatcher is running" in out.stderr
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", str(second)], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_no_ingest_process_serves_the_socket_in_the_dispatcher_itself(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """--no-ingest-process (the default): no child is forked for ingest; events are acknowledged and
    delivered."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    proc = _start(processes, config_dir, tmp_path, "--no-ingest-process")
    assert proc.publish([event_line()])[0]["deliveries"] == 1
    receiver.wait_count("/erp", 1)
    assert "ingest.process_started" not in proc.logs()


def test_forwarded_ingest_totals_are_counted_once_whatever_order_the_scrapes_read_them_in() -> None:
    """The parent's counters follow the child's totals: an older reading arriving after a newer one (two
    scrapes at once) adds nothing, and nothing is counted twice."""
    from dispatcher.metrics import IngestTotals, Metrics

    readings = iter([IngestTotals(accepted=5, refused=1), IngestTotals(accepted=3), IngestTotals(accepted=7)])
    metrics = Metrics()
    metrics.forward_ingest(lambda: next(readings))
    values = []
    for _ in range(3):
        metrics.render()
        values.append(metrics.registry.get_sample_value("dispatch_events_accepted_total"))
    assert values == [5, 5, 7]
    refused = metrics.registry.get_sample_value("dispatch_connections_refused_total", {"listener": "socket"})
    assert refused == 1


def test_deliveries_go_on_while_the_ingest_process_commits_a_flood(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """Two processes write one SQLite file: while the ingest process commits a pipelined flood back to back,
    the parent's leases and outcomes still get their turn (they queue on the store's lock file), so
    deliveries are recorded before the flood's last ack, not only after it."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    proc = _start(processes, config_dir, tmp_path)
    _ingest_pid(proc)
    flood = b"".join(event_line() for _ in range(30_000))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(proc.socket_path))

        def send() -> None:
            s.sendall(flood)
            s.shutdown(socket.SHUT_WR)

        threading.Thread(target=send, daemon=True).start()
        acks = b""
        while acks.count(b"\n") < 30_000:
            chunk = s.recv(1 << 16)
            assert chunk, "the dispatcher closed the connection"
            acks += chunk
        delivered_at_last_ack = _delivered(tmp_path / "state")
    assert acks.count(b'"ok":true') == 30_000
    assert delivered_at_last_ack >= 50, delivered_at_last_ack


def _delivered(state: Path) -> int:
    conn = sqlite3.connect(f"file:{state / 'dispatch.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        (n,) = conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'").fetchone()
        return int(n)
    finally:
        conn.close()


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_with_an_ingest_process_the_acks_run_first_on_busy_cores(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """The ingest process keeps the priority dispatch run started with; the main process (leases, outcomes)
    runs 5 nicer and the delivery processes at the default --delivery-nice below it (19 at most), all read
    back from /proc; without the option the main process keeps its priority."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    base = _nice(os.getpid())
    proc = _start(processes, config_dir, tmp_path)
    pid = _ingest_pid(proc)
    main = proc.proc.pid
    assert _nice(pid) == base
    assert _nice(main) == min(19, base + 5)
    delivery = [c for c in _children(main) if c != pid]
    assert delivery, "no delivery process found"
    assert all(_nice(c) == 19 for c in delivery)
    proc.stop()
    plain = DispatchProcess(config_dir, tmp_path / "state-plain")
    processes.append(plain)
    plain.publish([event_line()])
    assert _nice(plain.proc.pid) == base
    assert all(_nice(c) == 19 for c in _children(plain.proc.pid))
