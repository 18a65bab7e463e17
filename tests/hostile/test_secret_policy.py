"""Hostile webhook files against a real dispatcher: a pull request cannot make it send the host's files or
environment anywhere, refused secrets are failed attempts (retried, then dead), and a rotated secret file
takes effect without a reload (issue #9, classes 3, 5 and 7). Everything stays on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import wait_until
from tests.e2e.harness import DispatchProcess, Receiver, event_line, run_cli, write_webhook

MARKER = "zq9-HOST-SECRET-MARKER-41c7"
#: Two attempts one second apart: retried on the schedule, then dead.
TWO_ATTEMPTS = {"choice": "schedule", "kwargs": {"delays": [1]}, "max_attempts": 2}


def _deliveries(state: Path) -> list[dict[str, Any]]:
    out = run_cli("deliveries", "list", "--state", str(state), "--format", "json")
    return list(json.loads(out.stdout))


def _show(state: Path, delivery_id: int, fmt: str) -> str:
    return run_cli("deliveries", "show", "--state", str(state), "--format", fmt, str(delivery_id)).stdout


def _signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_refused_secret_references_never_leave_the_host(
    receiver: Receiver, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """An env name outside WEBHOOK_*, /etc/hostname, ../x and a symlink leaving the secrets directory are
    each refused: nothing reaches the receiver, each attempt is recorded with a reason naming the
    reference, retried, dead at the end with its callback; the marker is in no log and no output."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (tmp_path / "x").write_text(MARKER + "-dotdot\n")
    (tmp_path / "outside").write_text(MARKER + "-link\n")
    (secrets_dir / "escape").symlink_to(tmp_path / "outside")
    config = tmp_path / "webhooks.d"
    hostile: dict[str, tuple[dict[str, Any], str]] = {
        "env": ({"additional_headers": {"X-Env": {"env": "AWS_SECRET_ACCESS_KEY"}}}, "AWS_SECRET_ACCESS_KEY"),
        "hostname": ({"secret_key": {"file": "/etc/hostname"}}, "/etc/hostname"),
        "dotdot": ({"additional_headers": {"X-File": {"file": "../x"}}}, "../x"),
        "escape": (
            {"config": {"auth": {"type": "basic", "username": "u", "password": {"file": "escape"}}}},
            "escape",
        ),
    }
    for name, (spec, _ref) in hostile.items():
        callback = {"url": receiver.url(f"/callback-{name}"), "on": ["dead"]}
        write_webhook(
            config,
            name,
            receiver.url(f"/{name}"),
            retry_countdown_config=TWO_ATTEMPTS,
            callback=callback,
            **spec,
        )
    state = tmp_path / "state"
    proc = DispatchProcess(
        config,
        state,
        extra_args=["--secrets-dir", str(secrets_dir)],
        env={"AWS_SECRET_ACCESS_KEY": MARKER + "-env"},
    )
    processes.append(proc)
    [ack] = proc.publish([event_line()])
    assert ack["ok"] and ack["deliveries"] == len(hostile)
    wait_until(lambda: sum(d["status"] == "dead" for d in _deliveries(state)) == len(hostile), timeout=20)
    for name in hostile:
        receiver.wait_count(f"/callback-{name}", 1)
    outputs = [proc.logs()]
    assert "secrets.unresolved" in outputs[0] and "AWS_SECRET_ACCESS_KEY" in outputs[0]  # said at start-up
    for row in _deliveries(state):
        ref = hostile[row["webhook"]][1]
        detail = json.loads(_show(state, row["id"], "json"))
        errors = [a["error"] for a in detail["attempt_log"]]
        assert [a["status_code"] for a in detail["attempt_log"]] == [None, None], row
        assert len(errors) == 2 and all(ref in e and "refused" in e for e in errors), errors
        assert detail["dead_reason"] == "max attempts reached (2)"
        outputs += [_show(state, row["id"], "text"), json.dumps(detail)]
    for name in hostile:
        assert receiver.on(f"/{name}") == [], name  # nothing was ever sent to the hostile target
        [posted] = receiver.on(f"/callback-{name}")
        outcome = posted.json()
        assert outcome["outcome"] == "dead" and hostile[name][1] in outcome["error"]
        outputs.append(posted.body.decode())
    for text in outputs:
        assert MARKER not in text
    for got in receiver.requests:
        assert MARKER not in json.dumps(got.headers) and MARKER.encode() not in got.body


def _deliver_one(proc: DispatchProcess, receiver: Receiver, path: str) -> Any:
    before = len(receiver.on(path))
    proc.publish([event_line()])
    return receiver.wait_count(path, before + 1)[before]


def _wait_signed_with(proc: DispatchProcess, receiver: Receiver, secret: str, timeout: float = 8.0) -> None:
    """Deliver events until one arrives signed with ``secret`` (the rotation has taken effect), or fail."""

    def signed_with_secret() -> bool:
        got = _deliver_one(proc, receiver, "/a")
        return got.headers["x-whisperer-signature"] == _signature(secret, got.body)

    wait_until(signed_with_secret, timeout=timeout, interval=0.2)  # each poll delivers one probe event


def test_a_rotated_secret_file_is_used_without_reload_or_sighup(
    receiver: Receiver, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """A secret file rewritten in place, then rotated by a Kubernetes-style ``..data`` symlink swap, signs
    the next deliveries within a few seconds; webhooks.d is untouched and no SIGHUP is sent."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "a").write_text("first-secret\n")
    config = tmp_path / "webhooks.d"
    write_webhook(config, "a", receiver.url("/a"), secret_key={"file": "a"})
    proc = DispatchProcess(
        config, tmp_path / "state", extra_args=["--secrets-dir", str(secrets_dir), "--no-watch"]
    )
    processes.append(proc)
    first = _deliver_one(proc, receiver, "/a")
    assert first.headers["x-whisperer-signature"] == _signature("first-secret", first.body)

    (secrets_dir / "a").write_text("second-secret\n")  # in place: same inode
    _wait_signed_with(proc, receiver, "second-secret")

    # A Kubernetes secret volume: a -> ..data/a, ..data -> ..<timestamp>, swapped atomically.
    for version, value in (("..v1", "third-secret"), ("..v2", "fourth-secret")):
        (secrets_dir / version).mkdir()
        (secrets_dir / version / "a").write_text(value + "\n")
    (secrets_dir / "..data").symlink_to("..v1")
    os.replace(_link(secrets_dir, "a.tmp", "..data/a"), secrets_dir / "a")
    _wait_signed_with(proc, receiver, "third-secret")
    os.replace(_link(secrets_dir, "..data.tmp", "..v2"), secrets_dir / "..data")
    _wait_signed_with(proc, receiver, "fourth-secret")

    logs = proc.logs()
    assert "secrets.reread" in logs
    for value in ("first-secret", "second-secret", "third-secret", "fourth-secret"):
        assert value not in logs
        assert base64.b64encode(value.encode()).decode() not in logs


def _link(directory: Path, name: str, target: str) -> Path:
    path = directory / name
    path.symlink_to(target)
    return path
