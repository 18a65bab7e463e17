"""``reconcile``'s secret-source rules: a pull request cannot quietly point a secret at the host's files or
environment (``secret-path-traversal``, ``secret-path-outside``, ``secret-env-pattern``)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from reconciler.cli import reconcile
from reconciler.model import Diagnostic
from reconciler.rules import check_secret_sources
from reconciler.secretsources import SecretSources
from reconciler.yamlsource import parse_source

DEFAULT = SecretSources(("/run/secrets",))

HOSTILE = """\
apiVersion: webhooks/v1
kind: Webhook
metadata:
  name: hostile
spec:
  target_url: https://hostile.example.com/in
  event_type: package.created
  secret_key: {file: ../x}
  additional_headers:
    X-Source: oms
    X-Env: {env: AWS_SECRET_ACCESS_KEY}
    X-Host: {file: /etc/hostname}
  config:
    auth: {type: basic, username: u, password: {file: /run/secrets/../../etc/shadow}}
"""

CLEAN = """\
apiVersion: webhooks/v1
kind: Webhook
metadata:
  name: clean
spec:
  target_url: https://clean.example.com/in
  event_type: package.created
  secret_key: {env: WEBHOOK_CLEAN_SECRET}
  additional_headers:
    X-Key: {file: clean-key}
  config:
    auth: {type: basic, username: u, password: {file: /run/secrets/team/clean-pw}}
"""


def findings(text: str, sources: SecretSources = DEFAULT) -> list[Diagnostic]:
    (doc,) = parse_source(text, "f.yaml").documents
    return check_secret_sources(doc, "f.yaml", sources)


def located(found: list[Diagnostic]) -> list[tuple[int, int, str, str, str]]:
    return [(d.line, d.column, d.severity.value, d.rule, d.json_path) for d in found]


def test_each_refused_reference_is_located_at_its_name() -> None:
    """'..' is an error; an env name outside WEBHOOK_* and an absolute path outside /run/secrets are warnings;
    each points at the reference's name (line, column, JSON path)."""
    assert located(findings(HOSTILE)) == [
        (8, 22, "error", "secret-path-traversal", "$.spec.secret_key.file"),
        (11, 18, "warning", "secret-env-pattern", "$.spec.additional_headers.X-Env.env"),
        (12, 20, "warning", "secret-path-outside", "$.spec.additional_headers.X-Host.file"),
        (14, 55, "error", "secret-path-traversal", "$.spec.config.auth.password.file"),
    ]


def test_messages_name_the_reference_and_the_policy() -> None:
    """A finding says which reference, and which directories or patterns it would need."""
    by_rule = {d.rule: d.message for d in findings(HOSTILE)}
    assert "AWS_SECRET_ACCESS_KEY" in by_rule["secret-env-pattern"]
    assert "WEBHOOK_*" in by_rule["secret-env-pattern"]
    assert (
        "/etc/hostname" in by_rule["secret-path-outside"] and "/run/secrets" in by_rule["secret-path-outside"]
    )
    assert "'..'" in by_rule["secret-path-traversal"]


def test_references_the_default_policy_allows_draw_no_finding() -> None:
    """WEBHOOK_* names, relative file names and absolute paths inside /run/secrets pass."""
    assert findings(CLEAN) == []


def test_the_policy_decides_what_is_outside() -> None:
    """With other secrets directories and env patterns, the same references are judged against those."""
    sources = SecretSources(("/etc",), ("AWS_*",))
    assert located(findings(HOSTILE, sources)) == [
        (8, 22, "error", "secret-path-traversal", "$.spec.secret_key.file"),
        (14, 55, "error", "secret-path-traversal", "$.spec.config.auth.password.file"),
    ]
    rules = {d.rule for d in findings(CLEAN, sources)}
    assert rules == {"secret-env-pattern", "secret-path-outside"}


def test_a_lexical_prefix_is_not_inside() -> None:
    """/run/secrets-other/x is not inside /run/secrets, and the directory itself is not a secret file."""
    text = CLEAN.replace("/run/secrets/team/clean-pw", "/run/secrets-other/x")
    assert [d.rule for d in findings(text)] == ["secret-path-outside"]
    assert [d.rule for d in findings(CLEAN.replace("/run/secrets/team/clean-pw", "/run/secrets"))] == [
        "secret-path-outside"
    ]


def run(*args: str) -> Result:
    return CliRunner().invoke(reconcile, list(args))


def tree(tmp_path: Path, **files: str) -> Path:
    directory = tmp_path / "webhooks.d"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_reconcile_check_fails_on_traversal_and_reports_every_finding(tmp_path: Path) -> None:
    """``reconcile --check`` exits 1 on '..' and prints every secret-source finding with its place."""
    directory = tree(tmp_path, **{"hostile.yaml": HOSTILE, "clean.yaml": CLEAN})
    result = run("--check", "--format", "json", str(directory))
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    got = [(Path(d["file"]).name, d["line"], d["column"], d["rule"]) for d in data["diagnostics"]]
    assert got == [
        ("hostile.yaml", 8, 22, "secret-path-traversal"),
        ("hostile.yaml", 11, 18, "secret-env-pattern"),
        ("hostile.yaml", 12, 20, "secret-path-outside"),
        ("hostile.yaml", 14, 55, "secret-path-traversal"),
    ]
    github = run("--check", "--format", "github", str(directory)).stdout
    assert "::error file=" in github and "title=secret-path-traversal" in github
    assert "::warning file=" in github and "title=secret-env-pattern" in github


def test_warnings_alone_pass_unless_strict(tmp_path: Path) -> None:
    """References outside the policy but without '..' are warnings: exit 0, or 1 with --strict."""
    text = HOSTILE.replace("{file: ../x}", "{env: WEBHOOK_X}").replace(
        "/run/secrets/../../etc/shadow", "/run/secrets/pw"
    )
    directory = tree(tmp_path, **{"warned.yaml": text})
    result = run("--check", str(directory))
    assert result.exit_code == 0, result.output
    assert "warning[secret-env-pattern]" in result.stdout and "warning[secret-path-outside]" in result.stdout
    assert run("--check", "--strict", str(directory)).exit_code == 1


def test_secret_env_and_secrets_dir_options_widen_the_policy(tmp_path: Path) -> None:
    """--secret-env and --secrets-dir (the dispatcher's options, repeated here) silence those warnings."""
    text = HOSTILE.replace("{file: ../x}", "{env: WEBHOOK_X}").replace(
        "/run/secrets/../../etc/shadow", "/run/secrets/pw"
    )
    directory = tree(tmp_path, **{"warned.yaml": text})
    args = ["--secret-env", "WEBHOOK_*", "--secret-env", "AWS_*", "--secrets-dir", "/etc"]
    result = run("--check", "--strict", *args, "--secrets-dir", "/run/secrets", str(directory))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stdout


def test_credentials_directory_is_the_default_when_set(tmp_path: Path) -> None:
    """Without --secrets-dir, absolute paths are judged against $CREDENTIALS_DIRECTORY when it is set."""
    text = CLEAN.replace("/run/secrets/team/clean-pw", "/run/credentials/x.service/pw")
    directory = tree(tmp_path, **{"c.yaml": text})
    runner = CliRunner(env={"CREDENTIALS_DIRECTORY": "/run/credentials/x.service"})
    assert runner.invoke(reconcile, ["--check", "--strict", str(directory)]).exit_code == 0
    result = CliRunner(env={"CREDENTIALS_DIRECTORY": None}).invoke(reconcile, ["--check", str(directory)])
    assert "warning[secret-path-outside]" in result.stdout
