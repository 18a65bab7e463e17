"""End to end: a real ``dispatch run`` process delivering to a real HTTP receiver on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.conftest import wait_until
from tests.e2e.harness import DispatchProcess, Receiver, event_line, run_cli, write_webhook

FAST_RETRY = {"choice": "schedule", "kwargs": {"delays": [1, 1]}, "max_attempts": 3}


def _start(
    processes: list[DispatchProcess], config: Path, tmp_path: Path, **kwargs: object
) -> DispatchProcess:
    proc = DispatchProcess(config, tmp_path / "state", **kwargs)  # type: ignore[arg-type]
    processes.append(proc)
    return proc


def test_signed_delivery_verifies_with_the_standard_webhooks_library(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A whsec_ secret signs every delivery so the reference library verifies it, and X-Whisperer-Signature is
    the hex HMAC-SHA256 of the exact body."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    write_webhook(
        config_dir,
        "erp",
        receiver.url("/erp"),
        secret_key={"env": "WEBHOOK_ERP_SECRET"},
        additional_headers={"X-Source": "oms"},
    )
    proc = _start(processes, config_dir, tmp_path, env={"WEBHOOK_ERP_SECRET": secret})
    acks = proc.publish([event_line(uuid="c9591f0d1c1d4da58ade880921bd7e93", payload={"id": 73})])
    assert acks == [{"ok": True, "uuid": "c9591f0d1c1d4da58ade880921bd7e93", "deliveries": 1}]
    [got] = receiver.wait_count("/erp", 1)
    StandardWebhook(secret).verify(got.body, got.headers)  # raises if the signature does not verify
    expected = hmac.new(secret.encode(), got.body, hashlib.sha256).hexdigest()
    assert got.headers["x-whisperer-signature"] == f"sha256={expected}"
    assert got.headers["x-whisperer-event"] == "package.created"
    assert got.headers["webhook-id"] == "c9591f0d1c1d4da58ade880921bd7e93"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-source"] == "oms"
    assert got.json() == {
        "event": {"type": "package.created", "uuid": "c9591f0d1c1d4da58ade880921bd7e93"},
        "payload": {"id": 73},
    }
    assert secret not in proc.logs()


def test_retries_follow_the_schedule_and_every_attempt_is_shown(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A receiver answering 500, 500, 200 gets three attempts about a second apart, and `deliveries show`
    lists all three with status codes and durations."""
    receiver.respond("/flaky", 500, 500, 200)
    write_webhook(config_dir, "flaky", receiver.url("/flaky"), retry_countdown_config=FAST_RETRY)
    proc = _start(processes, config_dir, tmp_path)
    proc.publish([event_line()])
    got = receiver.wait_count("/flaky", 3, timeout=20)
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert all(0.8 <= g <= 5.0 for g in gaps), gaps
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert len({r.body for r in got}) == 1  # same bytes on every attempt

    def delivered() -> bool:
        out = run_cli("deliveries", "list", "--state", str(tmp_path / "state"), "--format", "json")
        return json.loads(out.stdout)[0]["status"] == "delivered"

    wait_until(delivered)
    listed = json.loads(
        run_cli("deliveries", "list", "--state", str(tmp_path / "state"), "--format", "json").stdout
    )
    shown = run_cli(
        "deliveries", "show", str(listed[0]["id"]), "--state", str(tmp_path / "state"), "--format", "json"
    )
    doc = json.loads(shown.stdout)
    assert [a["status_code"] for a in doc["attempt_log"]] == [500, 500, 200]
    assert all(a["duration_seconds"] > 0 for a in doc["attempt_log"])
    text = run_cli("deliveries", "show", str(listed[0]["id"]), "--state", str(tmp_path / "state")).stdout
    assert "status 500" in text and "status 200" in text


def test_gone_stops_at_once_and_exhausted_deliveries_die_then_retry_all_dead_delivers(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """410 stops after one attempt; a delivery failing every attempt becomes dead; `retry --all-dead`
    delivers both once the receiver is healthy."""
    receiver.respond("/gone", 410, 200)
    receiver.respond("/down", 503)
    write_webhook(config_dir, "gone", receiver.url("/gone"), retry_countdown_config=FAST_RETRY)
    write_webhook(config_dir, "down", receiver.url("/down"), retry_countdown_config=FAST_RETRY)
    proc = _start(processes, config_dir, tmp_path)
    proc.publish([event_line()])
    state = str(tmp_path / "state")

    def dead() -> list[dict[str, object]]:
        return json.loads(
            run_cli("deliveries", "list", "--state", state, "--status", "dead", "--format", "json").stdout
        )

    wait_until(lambda: len(dead()) == 2, timeout=20)
    reasons = {d["webhook"]: d["dead_reason"] for d in dead()}
    assert reasons["gone"] == "410 Gone"
    assert "max attempts" in str(reasons["down"])
    assert len(receiver.on("/gone")) == 1
    assert len(receiver.on("/down")) == 3
    receiver.respond("/down", 200)
    out = run_cli("deliveries", "retry", "--all-dead", "--state", state)
    assert out.returncode == 0 and "requeued 2" in out.stdout
    receiver.wait_count("/gone", 2)
    receiver.wait_count("/down", 4)
    wait_until(lambda: not dead())
    statuses = json.loads(run_cli("deliveries", "list", "--state", state, "--format", "json").stdout)
    assert {d["status"] for d in statuses} == {"delivered"}


def test_garbage_lines_are_rejected_and_good_lines_around_them_are_delivered(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """Bad lines get ok:false with their line number; the good ones are delivered; the process keeps running;
    the same uuid twice is accepted once."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    proc = _start(processes, config_dir, tmp_path, extra_args=["--max-line-bytes", "2048"])
    uuid = "0123456789abcdef0123456789abcdef"
    lines = [
        event_line(uuid=uuid),
        b"not json\n",
        b"[1,2,3]\n",
        b'{"event": {"uuid": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}\n',
        event_line(payload={"blob": "x" * 5000}),
        event_line(webhook="nobody"),
        event_line(uuid=uuid),
        event_line(uuid="fedcba9876543210fedcba9876543210"),
    ]
    acks = proc.publish(lines)
    assert len(acks) == 8
    assert acks[0] == {"ok": True, "uuid": uuid, "deliveries": 1}
    for i in (1, 2, 3, 4, 5):
        assert acks[i]["ok"] is False and acks[i]["line"] == i + 1, acks[i]
    assert "too long" in acks[4]["error"]
    assert "nobody" in acks[5]["error"]
    assert acks[6] == {"ok": True, "uuid": uuid, "duplicate": True}
    assert acks[7]["ok"] is True and acks[7]["deliveries"] == 1
    got = receiver.wait_count("/erp", 2)
    assert sorted(r.headers["webhook-id"] for r in got) == sorted([uuid, "fedcba9876543210fedcba9876543210"])
    assert proc.proc.poll() is None
    again = proc.publish([event_line()])
    assert again[0]["ok"] is True


def test_loopback_targets_are_refused_without_allow_cidr(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """Without --allow-cidr, targets at 127.0.0.1, localhost, 0.0.0.0, 127.1 and 2130706433 are never
    contacted, and each delivery records why."""
    hosts = ["127.0.0.1", "localhost", "0.0.0.0", "127.1", "2130706433"]
    for i, host in enumerate(hosts):
        write_webhook(
            config_dir, f"local-{i}", f"http://{host}:{receiver.port}/h{i}", retry_countdown_config=FAST_RETRY
        )
    proc = _start(processes, config_dir, tmp_path, allow_loopback=False)
    acks = proc.publish([event_line()])
    assert acks[0]["deliveries"] == len(hosts)
    state = str(tmp_path / "state")

    def deliveries() -> list[dict[str, Any]]:
        return json.loads(run_cli("deliveries", "list", "--state", state, "--format", "json").stdout)

    # Every attempt the schedule allows has been made and refused: only then is "never contacted" shown.
    wait_until(lambda: [d["status"] for d in deliveries()] == ["dead"] * len(hosts), timeout=20)
    for row in deliveries():
        assert row["attempts"] == FAST_RETRY["max_attempts"], row
        assert "egress denied" in str(row["last_error"]), row
    assert receiver.requests == []


def test_stdin_mode_acks_on_stdout_and_exits_zero_at_eof(
    receiver: Receiver, config_dir: Path, tmp_path: Path
) -> None:
    """--stdin: one ack per line on stdout, due attempts finish at EOF, exit 0; later retries stay stored."""
    receiver.respond("/later", 500)
    write_webhook(config_dir, "now", receiver.url("/now"))
    write_webhook(
        config_dir,
        "later",
        receiver.url("/later"),
        retry_countdown_config={"choice": "fixed", "kwargs": {"seconds": 3600}},
    )
    proc = DispatchProcess(config_dir, tmp_path / "state", stdin=True)
    out, _ = proc.proc.communicate(event_line() + b"garbage\n" + event_line(), timeout=30)
    proc.stop()
    acks = [json.loads(x) for x in out.splitlines()]
    assert [a["ok"] for a in acks] == [True, False, True]
    assert acks[1]["line"] == 2
    assert proc.proc.returncode == 0
    assert len(receiver.on("/now")) == 2
    assert len(receiver.on("/later")) == 2  # each event's first attempt ran (and failed)
    rows = json.loads(
        run_cli(
            "deliveries", "list", "--state", str(tmp_path / "state"), "--status", "failed", "--format", "json"
        ).stdout
    )
    assert len(rows) == 2 and all(r["webhook"] == "later" for r in rows)


def test_kill_minus_nine_during_ingest_loses_no_acknowledged_event(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """kill -9 while 2,000 events stream in, then a restart: every acknowledged event reaches the receiver."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    proc = _start(processes, config_dir, tmp_path)
    acked: list[str] = []
    uuids = [secrets.token_hex(16) for _ in range(2000)]

    def stream() -> None:
        import socket as sockets

        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as s:
            s.connect(str(proc.socket_path))
            reader = s.makefile("rb")
            for i in range(0, len(uuids), 20):
                try:
                    s.sendall(b"".join(event_line(uuid=u) for u in uuids[i : i + 20]))
                    for _ in range(20):
                        line = reader.readline()
                        if not line:
                            return
                        ack = json.loads(line)
                        if ack.get("ok"):
                            acked.append(ack["uuid"])
                    time.sleep(0.005)  # keep the stream going long enough for the kill to land inside it
                except OSError:
                    return

    writer = threading.Thread(target=stream)
    writer.start()
    wait_until(lambda: len(acked) >= 600, timeout=30)
    proc.kill9()
    writer.join(10)
    assert 600 <= len(acked) < 2000, "the kill must land while events are streaming in"
    proc2 = _start(processes, config_dir, tmp_path, socket_path=tmp_path / "second.sock")
    receiver.wait_for(lambda rs: set(acked) <= {r.headers["webhook-id"] for r in rs}, timeout=60)
    assert proc2.proc.poll() is None


def test_sigterm_stops_cleanly_and_the_socket_is_removed(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """SIGTERM makes the dispatcher exit 0 promptly and remove its socket."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    proc = _start(processes, config_dir, tmp_path)
    proc.publish([event_line()])
    receiver.wait_count("/erp", 1)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(15) == 0
    assert time.monotonic() - started < 12
    assert not proc.socket_path.exists()


def test_socket_path_holding_a_regular_file_is_refused(config_dir: Path, tmp_path: Path) -> None:
    """Any existing file at --socket that is not a stale socket is an error, and is left untouched."""
    write_webhook(config_dir, "erp", "https://erp.example.com/hook")
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    out = run_cli("run", "--config", str(config_dir), "--state", str(tmp_path / "s"), "--socket", str(path))
    assert out.returncode != 0
    assert "not a socket" in out.stderr
    assert path.read_text() == "precious"


def test_stale_socket_is_replaced_and_mode_is_0660(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A socket left by a killed dispatcher is replaced on restart; the new socket has mode 0660."""
    write_webhook(config_dir, "erp", receiver.url("/erp"))
    sock = tmp_path / "d.sock"
    first = _start(processes, config_dir, tmp_path, socket_path=sock)
    first.kill9()
    assert sock.exists()
    second = _start(processes, config_dir, tmp_path, socket_path=sock)
    assert os.stat(sock).st_mode & 0o777 == 0o660
    assert second.publish([event_line()])[0]["ok"] is True
