"""End to end: an OMS export imported by `reconcile import`, delivered by a real dispatcher on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import DispatchProcess, Receiver, event_line

RECONCILE = Path(sys.executable).parent / "reconcile"
RETRY = {"choice": "fixed", "kwargs": {"seconds": 1}}


def _env_file(path: Path) -> dict[str, str]:
    """What a POSIX shell reads from the secrets file."""
    shown = subprocess.run(
        ["sh", "-c", f'set -a; . "{path}"; env -0'], env={}, capture_output=True, check=True
    ).stdout
    pairs = (item.split("=", 1) for item in shown.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k.startswith("WEBHOOK_")}


def hook_row(pk: int, url: str, **fields: object) -> dict[str, object]:
    """A REST row of an active package.created hook."""
    row = {"id": pk, "target_url": url, "event_type": "package.created", "is_active": True}
    return {**row, "retry_countdown_config": RETRY, **fields}


def test_an_imported_export_is_delivered_signed_scoped_and_replayed(
    receiver: Receiver, tmp_path: Path, processes: list[DispatchProcess]
) -> None:
    """The imported tree routes filtered and unfiltered events as the OMS does, signs with the exported
    secret, sends the credential header and basic auth from the secrets file, and replays an undelivered
    event."""
    auth = {"auth_type": "basic", "username": "oms", "password": "basic-pw-Cc33"}
    envelope = {
        "event": {"type": "package.created", "uuid": "0b6d3c1e5a524c0e9f3e2d4b8f9a1c77"},
        "payload": {"id": 74},
    }
    rows = [
        hook_row(
            1,
            receiver.url("/ch3"),
            secret_key="imp-secret-Aa11",
            config={"channel_id": 3},
            additional_headers={"Authorization": "Token hdr-tok-Bb22"},
        ),
        hook_row(2, receiver.url("/all"), config={"auth": auth}),
        hook_row(3, receiver.url("/ch5"), config={"channel_id": 5}),
        {
            "id": 90,
            "webhook": {"id": 2},
            "uuid": "0b6d3c1e-5a52-4c0e-9f3e-2d4b8f9a1c77",
            "delivered": False,
            "request_payload": envelope,
        },
    ]
    export = tmp_path / "hooks.json"
    export.write_text(json.dumps({"count": 4, "next": None, "previous": None, "results": rows}))
    out, secrets_file, events = tmp_path / "webhooks.d", tmp_path / "secrets.env", tmp_path / "events.ndjson"
    command = [str(RECONCILE), "import", str(export), "--out", str(out), "--secrets-out", str(secrets_file)]
    done = subprocess.run([*command, "--events", str(events)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for value in ("imp-secret-Aa11", "hdr-tok-Bb22", "basic-pw-Cc33"):
        assert value not in done.stdout + done.stderr
        assert all(value not in p.read_text() for p in out.glob("*.yaml"))
    proc = DispatchProcess(out, tmp_path / "state", env=_env_file(secrets_file))
    processes.append(proc)

    filtered = proc.publish([event_line(uuid="a" * 32, filter={"channel_id": 3})])
    unfiltered = proc.publish([event_line(uuid="b" * 32)])
    replayed = proc.publish([events.read_bytes()])
    assert filtered[0]["deliveries"] == 1  # only the channel-3 hook: {} and channel 5 are out of scope
    assert unfiltered[0]["deliveries"] == 3  # every active hook of the type, whatever its config
    assert replayed == [{"ok": True, "uuid": "0b6d3c1e5a524c0e9f3e2d4b8f9a1c77", "deliveries": 1}]

    receiver.wait_for(lambda rs: len(rs) >= 5)
    ch3, every, ch5 = receiver.on("/ch3"), receiver.on("/all"), receiver.on("/ch5")
    assert sorted(r.json()["event"]["uuid"] for r in ch3) == ["a" * 32, "b" * 32]
    assert sorted(r.json()["event"]["uuid"] for r in every) == ["0b6d3c1e5a524c0e9f3e2d4b8f9a1c77", "b" * 32]
    assert [r.json()["event"]["uuid"] for r in ch5] == ["b" * 32]
    for got in ch3:
        expected = hmac.new(b"imp-secret-Aa11", got.body, hashlib.sha256).hexdigest()
        assert got.headers["x-whisperer-signature"] == f"sha256={expected}"
        assert got.headers["authorization"] == "Token hdr-tok-Bb22"
    basic = "Basic " + base64.b64encode(b"oms:basic-pw-Cc33").decode()
    assert all(r.headers["authorization"] == basic for r in every)
    assert next(r for r in every if r.json()["payload"] == {"id": 74})
    logs = proc.logs()
    assert all(value not in logs for value in ("imp-secret-Aa11", "hdr-tok-Bb22", "basic-pw-Cc33"))
