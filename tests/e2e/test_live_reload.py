"""End to end: live reconcile inside a running dispatcher, and what an operator sees (SPEC 5, 7, 8)."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import DispatchProcess, Receiver, event_line, run_cli, wait_until, write_webhook

FAST_RETRY = {"choice": "schedule", "kwargs": {"delays": [1]}, "max_attempts": 10}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    processes: list[DispatchProcess], config: Path, tmp_path: Path, **kwargs: Any
) -> tuple[DispatchProcess, str]:
    port = _free_port()
    extra = ["--metrics", f"127.0.0.1:{port}", *kwargs.pop("extra_args", [])]
    proc = DispatchProcess(config, tmp_path / "state", extra_args=extra, **kwargs)
    processes.append(proc)
    return proc, f"http://127.0.0.1:{port}"


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:  # loopback only
        return resp.status, resp.read()


def _status(base: str) -> dict[str, Any]:
    return json.loads(_get(base + "/status")[1])


def _metrics(base: str) -> dict[str, float]:
    """Every sample of /metrics as name{labels} -> value, parsed with prometheus_client's parser."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(_get(base + "/metrics")[1].decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _deliveries(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    out = run_cli("deliveries", "list", "--state", str(tmp_path / "state"), "--format", "json", *args)
    return json.loads(out.stdout)


def test_adding_changing_and_deleting_files_changes_routing_without_a_restart(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """Routing follows file changes without a restart and without losing queued work (how fast is
    bench/reload.py's to measure: a test never asserts a time)."""
    write_webhook(config_dir, "a", receiver.url("/a"))
    proc, base = _start(processes, config_dir, tmp_path)
    assert proc.publish([event_line()])[0]["deliveries"] == 1
    first = _status(base)["active_revision"]

    write_webhook(config_dir, "b", receiver.url("/b"))
    wait_until(lambda: _status(base)["active_revision"] != first)
    assert proc.publish([event_line()])[0]["deliveries"] == 2

    write_webhook(config_dir, "b", receiver.url("/b"), event_type="shipment.created")
    second = _status(base)["active_revision"]
    wait_until(lambda: _status(base)["active_revision"] != second)
    assert proc.publish([event_line()])[0]["deliveries"] == 1
    assert proc.publish([event_line("shipment.created")])[0]["deliveries"] == 1

    receiver.wait_count("/b", 2)  # before b goes: a removed webhook's queued deliveries are buried, not sent
    (config_dir / "b.yaml").unlink()
    third = _status(base)["active_revision"]
    wait_until(lambda: _status(base)["active_revision"] != third)
    assert proc.publish([event_line("shipment.created")])[0]["deliveries"] == 0
    receiver.wait_count("/a", 3)
    wait_until(lambda: [d["status"] for d in _deliveries(tmp_path)] == ["delivered"] * 5)  # none left to send
    assert len(receiver.on("/a")) == 3 and len(receiver.on("/b")) == 2  # nothing lost, nothing twice
    assert proc.proc.poll() is None


def test_broken_file_keeps_the_last_good_table_and_is_reported(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A broken save keeps the last good table serving; the log names file:line:col and rule, /status
    shows the failed attempted revision, the reload gauge is 0; fixing the file brings it back to 1."""
    write_webhook(config_dir, "a", receiver.url("/a"))
    proc, base = _start(processes, config_dir, tmp_path)
    good = _status(base)["active_revision"]
    broken = config_dir / "a.yaml"
    text = broken.read_text().replace("target_url:", "target_urll:")
    broken.write_text(text)
    wait_until(lambda: _status(base)["last_reload"]["successful"] is False)
    status = _status(base)
    assert status["active_revision"] == good
    assert status["attempted_revision"] != good
    assert _metrics(base)["config_last_reload_successful"] == 0
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "target_urll" in x)
    wait_until(lambda: f"a.yaml:{line}:" in proc.logs())
    assert "schema" in proc.logs()
    assert proc.publish([event_line()])[0]["deliveries"] == 1  # old table still routes
    receiver.wait_count("/a", 1)

    write_webhook(config_dir, "a", receiver.url("/a2"))
    wait_until(lambda: _status(base)["last_reload"]["successful"] is True)
    assert _metrics(base)["config_last_reload_successful"] == 1
    assert _metrics(base)["config_last_reload_success_timestamp_seconds"] > 0
    proc.publish([event_line()])
    receiver.wait_count("/a2", 1)


def test_fixing_a_wrong_url_unblocks_the_pending_retry(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A delivery failing on a wrong URL succeeds on its next attempt after the URL is fixed in the file."""
    receiver.respond("/wrong", 404)
    write_webhook(config_dir, "a", receiver.url("/wrong"), retry_countdown_config=FAST_RETRY)
    proc, _base = _start(processes, config_dir, tmp_path)
    proc.publish([event_line(uuid="aa" * 16)])
    receiver.wait_count("/wrong", 1)
    write_webhook(config_dir, "a", receiver.url("/right"), retry_countdown_config=FAST_RETRY)
    [got] = receiver.wait_count("/right", 1, timeout=10)
    assert got.headers["webhook-id"] == "aa" * 16
    wait_until(lambda: _deliveries(tmp_path)[0]["status"] == "delivered")


def test_inactive_holds_active_delivers_and_removal_buries(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """status: inactive holds pending deliveries, active again delivers them, removal buries them."""
    receiver.respond("/a", 500, 200)
    write_webhook(config_dir, "a", receiver.url("/a"), retry_countdown_config=FAST_RETRY)
    write_webhook(config_dir, "b", receiver.url("/b"), retry_countdown_config=FAST_RETRY, status="inactive")
    proc, base = _start(processes, config_dir, tmp_path)
    proc.publish([event_line(uuid="01" * 16, webhook="b")])  # published to the inactive one: held
    wait_until(lambda: _metrics(base).get("dispatch_deliveries_total{outcome=hold}") == 1)
    assert receiver.on("/b") == []
    write_webhook(config_dir, "b", receiver.url("/b"), retry_countdown_config=FAST_RETRY, status="active")
    receiver.wait_count("/b", 1, timeout=5)

    receiver.respond("/c", 503)
    before = _status(base)["active_revision"]
    write_webhook(config_dir, "c", receiver.url("/c"), retry_countdown_config=FAST_RETRY)
    wait_until(lambda: _status(base)["active_revision"] != before)
    proc.publish([event_line(uuid="02" * 16, webhook="c")])
    receiver.wait_count("/c", 1)
    (config_dir / "c.yaml").unlink()
    wait_until(lambda: any(d["webhook"] == "c" for d in _deliveries(tmp_path, "--status", "dead")), timeout=5)
    [dead] = [d for d in _deliveries(tmp_path, "--status", "dead") if d["webhook"] == "c"]
    assert dead["dead_reason"] == "webhook removed"


def test_rotated_secret_file_is_used_from_the_next_reload(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """After the secret file changes and a reload (SIGHUP), deliveries are signed with the new secret."""
    import hashlib
    import hmac
    import signal

    secret_file = tmp_path / "secret"
    secret_file.write_text("first-secret\n")
    write_webhook(config_dir, "a", receiver.url("/a"), secret_key={"file": str(secret_file)})
    proc, base = _start(processes, config_dir, tmp_path, extra_args=["--secrets-dir", str(tmp_path)])
    proc.publish([event_line()])
    [one] = receiver.wait_count("/a", 1)
    assert (
        one.headers["x-whisperer-signature"]
        == "sha256=" + hmac.new(b"first-secret", one.body, hashlib.sha256).hexdigest()
    )
    reloads = _metrics(base).get("dispatch_config_reloads_total{result=success}", 0)
    secret_file.write_text("second-secret\n")
    proc.signal(signal.SIGHUP)
    wait_until(lambda: _metrics(base).get("dispatch_config_reloads_total{result=success}", 0) > reloads)
    proc.publish([event_line()])
    two = receiver.wait_count("/a", 2)[1]
    assert (
        two.headers["x-whisperer-signature"]
        == "sha256=" + hmac.new(b"second-secret", two.body, hashlib.sha256).hexdigest()
    )
    assert "second-secret" not in proc.logs() and "first-secret" not in proc.logs()


def test_metrics_parse_and_match_what_the_receiver_saw(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """/metrics parses with prometheus_client's parser and its counters match the receiver's count."""
    receiver.respond("/a", 500, 200)
    write_webhook(config_dir, "a", receiver.url("/a"), retry_countdown_config=FAST_RETRY)
    write_webhook(config_dir, "b", receiver.url("/b"))
    proc, base = _start(processes, config_dir, tmp_path)
    acks = proc.publish([event_line() for _ in range(5)] + [b"garbage\n"])
    assert sum(1 for a in acks if a["ok"]) == 5
    receiver.wait_count("/b", 5)
    receiver.wait_count("/a", 6)
    wait_until(lambda: _metrics(base).get("dispatch_deliveries_total{outcome=delivered}") == 10)
    m = _metrics(base)
    assert m["dispatch_events_accepted_total"] == 5
    assert m["dispatch_events_rejected_total"] == 1
    assert m["dispatch_deliveries_total{outcome=retry}"] == 1
    assert m["dispatch_attempt_duration_seconds_count"] == len(receiver.requests) == 11
    assert m["dispatch_queue_depth{status=delivered}"] == 10
    assert m["config_last_reload_successful"] == 1
    assert _get(base + "/healthz")[0] == 200
    status = _status(base)
    assert status["queue"]["delivered"] == 10
    assert {w["name"] for w in status["webhooks"]} == {"a", "b"}


def test_symlink_swap_of_the_whole_directory_is_picked_up(
    receiver: Receiver, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """Replacing the config directory through an atomic symlink swap (ConfigMap, git-sync) is applied."""
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    write_webhook(v1, "a", receiver.url("/a"))
    write_webhook(v2, "a", receiver.url("/swapped"))
    link = tmp_path / "webhooks.d"
    link.symlink_to(v1)
    proc, base = _start(processes, link, tmp_path)
    first = _status(base)["active_revision"]
    tmp_link = tmp_path / "webhooks.d.new"
    tmp_link.symlink_to(v2)
    os.replace(tmp_link, link)
    wait_until(lambda: _status(base)["active_revision"] != first, timeout=3)
    proc.publish([event_line()])
    receiver.wait_count("/swapped", 1)
    assert receiver.on("/a") == []


def test_the_status_document_never_shows_paths_queries_or_secrets(
    receiver: Receiver, config_dir: Path, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """/status lists webhooks by endpoint (scheme, host, port) only: no URL path or query, no secret."""
    write_webhook(
        config_dir, "a", receiver.url("/a?token=hunter2-query"), secret_key={"env": "WEBHOOK_A_SECRET"}
    )
    _proc, base = _start(processes, config_dir, tmp_path, env={"WEBHOOK_A_SECRET": "hunter2-secret"})
    raw = _get(base + "/status")[1].decode() + _get(base + "/metrics")[1].decode()
    assert "hunter2" not in raw
    doc = yaml.safe_load(_get(base + "/status")[1])
    assert doc["webhooks"][0]["endpoint"] == f"http://127.0.0.1:{receiver.port}"
