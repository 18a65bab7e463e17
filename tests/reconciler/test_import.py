"""``reconcile import``: dj-whisperer exports to webhook files, a secrets file and events, field by field."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from dispatcher.protocol import ParsedEvent, parse_line
from reconciler.check import Checker, CheckOptions
from reconciler.cli import main
from reconciler.importcli import import_command
from reconciler.importer import Secret, build_import, build_name
from reconciler.importrender import render_secrets
from reconciler.loader import load_tree

FIXTURES = Path(__file__).parent / "fixtures" / "import"
EXPORTS = ("dumpdata.json", "rest-page.json", "rest-list.json")
RECONCILE = Path(sys.executable).parent / "reconcile"
#: Every secret value in the fixtures: none may appear in a webhook file or in any output.
SECRET_VALUES = (
    "erp-secret-Zx81q",
    "omnitron-token-Q7w2",
    "basic-pass-Lm20x",
    "carrier-secret-Pp44k",
    "market-secret-Rr18t",
    "token-pass-Vb93z",
    "analytics-secret-Jk73m",
    "stock-secret-Ty55c",
    "stock-api-key-Hh12p",
    "legacy-secret-Wq09e",
    "transfer-secret-Nn61d",
    "transfer-bearer-Cc30g",
)


def run(*args: str) -> Result:
    return CliRunner().invoke(import_command, list(args))


def run_import(tmp_path: Path, *extra: str, exports: tuple[str, ...] = EXPORTS) -> Result:
    files = [str(FIXTURES / name) for name in exports]
    return run(
        *files, "--out", str(tmp_path / "webhooks.d"), "--secrets-out", str(tmp_path / "s.env"), *extra
    )


def documents(out: Path) -> dict[int, dict[str, Any]]:
    """The written documents by the dj-whisperer id they came from."""
    docs = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    return {int(d["metadata"]["labels"]["whisperer-id"]): d for d in docs}


def read_env_file(path: Path) -> dict[str, str]:
    """What a POSIX shell reads from the secrets file (``set -a; . FILE``)."""
    script = f'set -a; . "{path}"; env -0'
    shown = subprocess.run(["sh", "-c", script], env={}, capture_output=True, check=True).stdout
    pairs = (item.split("=", 1) for item in shown.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k.startswith("WEBHOOK_")}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """The dumpdata, REST page and REST list fixtures imported once, with their events."""
    tmp = tmp_path_factory.mktemp("import")
    result = run_import(
        tmp, "--events", str(tmp / "events.ndjson"), exports=(*EXPORTS, "dumpdata-events.json")
    )
    return tmp, result


# --- the whole tree ----------------------------------------------------------------------------------------


def test_import_writes_a_tree_that_passes_reconcile_check(written: tuple[Path, Result]) -> None:
    """Every webhook row becomes one file, and the tree passes `reconcile --check` (one http:// warning)."""
    tmp, result = written
    assert result.exit_code == 0, result.output
    out = tmp / "webhooks.d"
    assert len(list(out.glob("*.yaml"))) == 9
    assert Checker(CheckOptions(directory=out)).run() == 0
    assert {d.rule for d in load_tree(out).diagnostics} == {"insecure-url"}  # the one http:// row


def test_no_secret_value_is_written_into_a_webhook_file_or_any_output(written: tuple[Path, Result]) -> None:
    """Secret keys, passwords and credential headers become env references; their values appear nowhere."""
    tmp, result = written
    texts = [p.read_text() for p in (tmp / "webhooks.d").glob("*.yaml")]
    for value in SECRET_VALUES:
        assert all(value not in text for text in texts), value
        assert value not in result.output, value
    refs = re.findall(r"\{env: (\w+)\}", "".join(texts))
    assert refs and all(ref.startswith("WEBHOOK_") for ref in refs)


def test_the_secrets_file_is_0600_and_holds_every_referenced_value(written: tuple[Path, Result]) -> None:
    """The env-file is created 0600 and a shell reads from it exactly the values the references name."""
    tmp, _ = written
    secrets_file = tmp / "s.env"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    values = read_env_file(secrets_file)
    assert len(values) == len(SECRET_VALUES)
    assert all(any(marker in value for value in values.values()) for marker in SECRET_VALUES)
    refs = set(
        re.findall(r"\{env: (\w+)\}", "".join(p.read_text() for p in (tmp / "webhooks.d").glob("*.yaml")))
    )
    assert refs == set(values)


def test_env_file_values_survive_quotes_dollars_and_spaces(tmp_path: Path) -> None:
    """Values with spaces, quotes, $ and backslashes read back from the env-file unchanged."""
    tricky = ["plain-Abc123", "with space", "it's", "a\"b'c$HOME`x`\\", "$(id)", "=start", "#hash"]
    secrets = [Secret(f"WEBHOOK_T{i}", value, "t: secret_key") for i, value in enumerate(tricky)]
    path = tmp_path / "s.env"
    path.write_text(render_secrets(secrets))
    assert read_env_file(path) == {s.env: s.value for s in secrets}


# --- field by field ----------------------------------------------------------------------------------------


def test_fields_map_as_the_admin_screen_means_them(written: tuple[Path, Result]) -> None:
    """URL, event type, status, headers, config.auth and config.scope keep the OMS row's meaning."""
    docs = documents(written[0] / "webhooks.d")
    erp = docs[1]["spec"]
    assert erp["target_url"] == "https://erp.example.com/hooks/oms"
    assert erp["event_type"] == "package.created" and erp["status"] == "active"
    assert erp["additional_headers"]["X-Source"] == "oms"
    assert erp["additional_headers"]["Authorization"] == {
        "env": "WEBHOOK_ERP_EXAMPLE_COM_PACKAGE_CREATED_1_HEADER_AUTHORIZATION"
    }
    assert erp["config"] == {"scope": {"channel_id": 3}}
    assert docs[2]["spec"]["config"] == {
        "auth": {
            "type": "basic",
            "username": "oms",
            "password": {"env": "WEBHOOK_ERP_EXAMPLE_COM_PACKAGE_STATUS_SHIPPED_2_AUTH_PASSWORD"},
        },
        "scope": {"channel_id": 3, "warehouse": "ist-1"},
    }
    assert "secret_key" not in docs[2]["spec"] and "secret_key" not in docs[6]["spec"]  # null and ""
    market = docs[4]["spec"]
    assert market["status"] == "inactive"
    assert market["config"]["auth"] == {
        "type": "token",
        "username": "oms-bot",
        "password": {"env": "WEBHOOK_MARKETPLACE_EXAMPLE_ORG_SHIPMENT_CREATED_4_AUTH_PASSWORD"},
        "url": "https://marketplace.example.org/api/token/",
        "username_field": "email",
        "password_field": "pass",
        "token_key": "access",
        "header_format": "Bearer {}",
    }
    assert docs[3]["spec"]["config"] == {"scope": {}}  # unfiltered events only, as in the OMS
    assert docs[9]["spec"]["config"] == {"scope": {"channel_ids": [3, 5]}}
    assert docs[7]["spec"]["additional_headers"] == {
        "X-Api-Key": {"env": "WEBHOOK_STOCK_EXAMPLE_COM_STOCK_LOCATION_UPDATED_7_HEADER_X_API_KEY"},
        "Accept-Language": "tr",
    }
    assert docs[1]["metadata"]["labels"] == {
        "source": "whisperer",
        "whisperer-id": "1",
        "whisperer-user": "1",
    }


def test_every_retry_choice_is_kept_with_the_oms_attempt_count(written: tuple[Path, Result]) -> None:
    """fixed, linear, exponential and random keep their kwargs, with the OMS's 19 attempts (1 + 10 + 8)."""
    docs = documents(written[0] / "webhooks.d")
    retries = {pk: d["spec"]["retry_countdown_config"] for pk, d in docs.items()}
    assert retries[3] == {"choice": "fixed", "kwargs": {"seconds": 300}, "max_attempts": 19}
    assert retries[2] == {"choice": "linear", "kwargs": {"base": 60, "limit": 600}, "max_attempts": 19}
    assert retries[1] == {"choice": "exponential", "kwargs": {"base": 2, "limit": 3600}, "max_attempts": 19}
    assert retries[6] == {
        "choice": "exponential",
        "kwargs": {"base": 2, "factor": 30, "limit": 7200},
        "max_attempts": 19,
    }
    assert retries[4] == {
        "choice": "random",
        "kwargs": {"min_value": 60, "max_value": 600},
        "max_attempts": 19,
    }
    assert retries[8] == {"choice": "linear", "kwargs": {"base": 30}, "max_attempts": 19}


def test_a_schedule_beyond_the_retry_bounds_gets_fewer_attempts_and_a_warning(
    written: tuple[Path, Result],
) -> None:
    """exponential base 3 without a limit would wait years before retry 18: fewer attempts, and a warning."""
    tmp, result = written
    retry = documents(tmp / "webhooks.d")[5]["spec"]["retry_countdown_config"]
    assert retry["kwargs"] == {"base": 3, "factor": 10} and retry["max_attempts"] < 19
    assert f"max_attempts lowered from 19 to {retry['max_attempts']}" in result.stderr


def test_callback_and_headers_the_dispatcher_owns_are_reported_and_dropped(
    written: tuple[Path, Result],
) -> None:
    """The callback's Python path is named on stderr and dropped; a Content-Type override is dropped too."""
    tmp, result = written
    docs = documents(tmp / "webhooks.d")
    assert "callback" not in docs[3]["spec"]
    assert "callback 'oms.webhooks.callbacks.record_outcome'" in result.stderr and "dropped" in result.stderr
    assert docs[5]["spec"]["additional_headers"] == {"X-Tenant": "acme"}
    assert "header 'Content-Type' dropped" in result.stderr


def test_names_are_stable_unique_dns_labels(tmp_path: Path) -> None:
    """Names derive from host, event type and id; the same rows give the same names, at most 63 characters."""
    first = build_import([(n, json.loads((FIXTURES / n).read_text())) for n in EXPORTS], with_events=False)
    again = build_import([(n, json.loads((FIXTURES / n).read_text())) for n in EXPORTS], with_events=False)
    names = [h.name for h in first.webhooks]
    assert names == [h.name for h in again.webhooks] and len(set(names)) == len(names)
    assert "erp-example-com-package-created-1" in names
    long_name = build_name(
        123456, "https://" + "very-long-host." * 8 + "example.com/x", "package.status.shipped"
    )
    assert len(long_name) <= 63 and long_name.endswith("-123456")
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", n) for n in [*names, long_name])
    assert build_name(None, "https://a.example", "x.y") == build_name(None, "https://a.example", "x.y")


# --- events ------------------------------------------------------------------------------------------------


def test_undelivered_events_become_ndjson_for_dispatch_publish(written: tuple[Path, Result]) -> None:
    """Each undelivered WebhookEvent is one line addressed to its webhook, with its payload and uuid."""
    tmp, _ = written
    lines = (tmp / "events.ndjson").read_bytes().splitlines()
    assert len(lines) == 2  # the delivered one is left out
    parsed = [parse_line(line, i) for i, line in enumerate(lines, 1)]
    assert all(isinstance(p, ParsedEvent) for p in parsed)
    first = json.loads(lines[0])
    assert first["event"] == {"type": "package.created", "uuid": "c9591f0d1c1d4da58ade880921bd7e93"}
    assert first["payload"] == {"id": 73, "number": "000000073", "channel_name": "Shop"}
    assert first["webhook"] == "erp-example-com-package-created-1"
    assert json.loads(lines[1])["webhook"] == "marketplace-example-org-shipment-created-4"
    assert stat.S_IMODE((tmp / "events.ndjson").stat().st_mode) == 0o600


def test_event_rows_without_events_option_are_reported_not_written(tmp_path: Path) -> None:
    """Without --events the event rows are counted on stderr and no events file appears."""
    result = run_import(tmp_path, exports=("dumpdata.json", "dumpdata-events.json"))
    assert result.exit_code == 0, result.output
    assert "3 webhook event rows ignored" in result.stderr


def test_an_event_of_a_webhook_not_imported_is_an_error(tmp_path: Path) -> None:
    """An event whose webhook is not among the imported rows stops the import: nothing is written."""
    result = run_import(
        tmp_path, "--events", str(tmp_path / "e.ndjson"), exports=("rest-list.json", "dumpdata-events.json")
    )
    assert result.exit_code == 1
    assert "event's webhook 1 is not among the imported webhooks" in result.stderr
    assert not (tmp_path / "webhooks.d").exists() and not (tmp_path / "s.env").exists()


# --- refusals ----------------------------------------------------------------------------------------------


def test_existing_files_are_not_overwritten_without_force(tmp_path: Path) -> None:
    """A second import refuses (exit 1, nothing touched) and --force overwrites."""
    assert run_import(tmp_path).exit_code == 0
    target = tmp_path / "webhooks.d" / "erp-example-com-package-created-1.yaml"
    target.write_text("# edited by hand\n")
    (tmp_path / "s.env").write_text("kept\n")
    again = run_import(tmp_path)
    assert again.exit_code == 1
    assert f"{target} exists (--force overwrites it)" in again.stderr and "nothing written" in again.stderr
    assert target.read_text() == "# edited by hand\n" and (tmp_path / "s.env").read_text() == "kept\n"
    forced = run_import(tmp_path, "--force")
    assert forced.exit_code == 0, forced.output
    assert target.read_text().startswith("# yaml-language-server")
    assert stat.S_IMODE((tmp_path / "s.env").stat().st_mode) == 0o600


def test_a_name_defined_by_another_file_is_refused_even_with_force(tmp_path: Path) -> None:
    """An imported name that another file of DIR already defines would be a duplicate: refused."""
    out = tmp_path / "webhooks.d"
    out.mkdir()
    other = build_import([("d", json.loads((FIXTURES / "rest-list.json").read_text()))], with_events=False)
    (out / "hand-written.yaml").write_text(other.webhooks[0].text)
    result = run_import(tmp_path, "--force", exports=("rest-list.json",))
    assert result.exit_code == 1
    assert "is already defined in" in result.stderr
    assert [p.name for p in out.iterdir()] == ["hand-written.yaml"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event_type": "package.*"}, "no wildcards"),
        (
            {"retry_countdown_config": {"choice": "fibonacci", "kwargs": {}}},
            "choice 'fibonacci' has no equivalent",
        ),
        (
            {"config": {"auth": {"auth_type": "digest", "username": "u", "password": "p"}}},
            "neither 'basic' nor 'token'",
        ),
        ({"additional_headers": {"X-Count": 3}}, "the value is not a string"),
        (
            {"retry_countdown_config": {"choice": "linear", "kwargs": {"base": 60, "step": 5}}},
            "schema at $.spec.retry_countdown_config.kwargs",
        ),
    ],
)
def test_a_row_that_cannot_be_mapped_stops_the_import(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """A row with no faithful equivalent is an error naming the row; nothing at all is written."""
    rows = json.loads((FIXTURES / "rest-list.json").read_text())
    rows.append({**rows[0], "id": 10, **change})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(rows))
    result = run(str(export), "--out", str(tmp_path / "out"), "--secrets-out", str(tmp_path / "s.env"))
    assert result.exit_code == 1
    assert re.search(r"export\.json: \$\[1\] \(id 10\): error: .*" + re.escape(message), result.stderr), (
        result.stderr
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.env").exists()
    for value in SECRET_VALUES:
        assert value not in result.output


def test_credentials_in_the_target_url_move_to_basic_auth(tmp_path: Path) -> None:
    """user:password@ in a target URL (requests sends it as Basic auth) becomes config.auth with a secret."""
    row = {
        "id": 11,
        "target_url": "https://oms:p%40ss-Ee42@hooks.example.com/in",
        "event_type": "package.created",
        "retry_countdown_config": {"choice": "fixed", "kwargs": {"seconds": 60}},
    }
    result = build_import([("e.json", [row])], with_events=False)
    assert result.ok, [f.render() for f in result.findings]
    doc = yaml.safe_load(result.webhooks[0].text)
    assert doc["spec"]["target_url"] == "https://hooks.example.com/in"
    assert doc["spec"]["config"]["auth"]["username"] == "oms"
    assert [s.value for s in result.secrets] == ["p@ss-Ee42"]
    assert "p%40ss" not in result.webhooks[0].text


def test_a_file_that_is_not_an_export_exits_1(tmp_path: Path) -> None:
    """Broken JSON and JSON of another shape are reported per file; nothing is written."""
    (tmp_path / "broken.json").write_text('{"results": [')
    (tmp_path / "other.json").write_text('{"hello": "world"}')
    result = run(
        str(tmp_path / "broken.json"),
        str(tmp_path / "other.json"),
        "--out",
        str(tmp_path / "o"),
        "--secrets-out",
        str(tmp_path / "s.env"),
    )
    assert result.exit_code == 1
    assert "broken.json: error: not a JSON export" in result.stderr
    assert "other.json: error: not a dj-whisperer export" in result.stderr


def test_usage_errors_exit_3(tmp_path: Path) -> None:
    """A missing --out, or a secrets file the dispatcher would load as YAML, is a usage error (3)."""
    export = str(FIXTURES / "rest-list.json")
    assert run(export, "--secrets-out", str(tmp_path / "s.env")).exit_code == 3
    assert (
        run(export, "--out", str(tmp_path / "o"), "--secrets-out", str(tmp_path / "o" / "s.yaml")).exit_code
        == 3
    )


def test_reconcile_import_is_a_subcommand_of_the_console_script(tmp_path: Path) -> None:
    """`reconcile import ...` runs the importer, and `reconcile DIR` still checks a directory."""
    export = str(FIXTURES / "rest-page.json")
    out = tmp_path / "webhooks.d"
    done = subprocess.run(
        [str(RECONCILE), "import", export, "--out", str(out), "--secrets-out", str(tmp_path / "s.env")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    checked = subprocess.run([str(RECONCILE), "--check", str(out)], capture_output=True, text=True)
    assert checked.returncode == 0 and "2 webhooks valid" in checked.stdout
    with pytest.raises(SystemExit) as exited:
        main(["import", "--help"])
    assert exited.value.code == 0


def test_imported_files_are_readable_by_others_but_secrets_are_not(written: tuple[Path, Result]) -> None:
    """Webhook files get the usual mode (the umask's), never the temporary file's 0600."""
    mode = stat.S_IMODE(next((written[0] / "webhooks.d").glob("*.yaml")).stat().st_mode)
    assert mode == 0o644 & ~_umask()
    assert not [p for p in (written[0] / "webhooks.d").iterdir() if p.name.startswith(".")]  # no temporaries


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def test_the_walkthrough_fixtures_are_in_the_readme() -> None:
    """The README's migration walk-through runs on these fixtures (kept in step with their names)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Migrating from the OMS admin screen", 1)[1].split("\n## ", 1)[0]
    assert "F=tests/reconciler/fixtures/import\n" in section
    for name in ("dumpdata.json", "rest-page.json", "rest-list.json", "dumpdata-events.json"):
        assert f"$F/{name}" in section and (FIXTURES / name).is_file()
