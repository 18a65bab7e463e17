"""The loader over whole trees: annotated fixture folders, discovery, incremental reloads, revisions, values.

Fixture files carry their expectations as comments: ``# expect: error[rule] @COLUMN message fragment`` means a
diagnostic on that line (``@LINE:COLUMN`` for another line); several are separated by `` ;; ``. A file must
produce exactly its annotated diagnostics, nothing more.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from reconciler import filecheck, loader
from reconciler.limits import DEFAULT_LIMITS, Limits
from reconciler.loader import FileResult, LoadedFile, TreeLoader, TreeResult, build_webhook, load_tree
from reconciler.model import BasicAuth, Callback, RetryConfig, SecretRef, Source, TokenAuth, Webhook

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
_EXPECT = re.compile(r"#\s*expect:\s*(.*)$")
_ONE = re.compile(r"(error|warning)\[([a-z0-9-]+)\]\s+@(\d+)(?::(\d+))?\s+(.*)")


@dataclass(frozen=True)
class Expected:
    file: str
    line: int
    column: int
    severity: str
    rule: str
    fragment: str


def read_expectations(path: Path, shown: str) -> list[Expected]:
    found: list[Expected] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = _EXPECT.search(text)
        if not match:
            continue
        for part in match.group(1).split(" ;; "):
            one = _ONE.fullmatch(part.strip())
            assert one, f"bad expectation in {path.name}:{number}: {part!r}"
            severity, rule, first, second, fragment = one.groups()
            line, column = (int(first), int(second)) if second else (number, int(first))
            found.append(Expected(shown, line, column, severity, rule, fragment.strip()))
    return found


def unmatched(result: TreeResult, expected: list[Expected], file: str) -> tuple[list[Expected], list[str]]:
    """Expectations without a diagnostic, and diagnostics without an expectation, for one file."""
    actual = [d for d in result.diagnostics if d.file == file]
    missing: list[Expected] = []
    for want in expected:
        for d in actual:
            place = (d.line, d.column, d.severity.value, d.rule)
            if place == (want.line, want.column, want.severity, want.rule) and want.fragment in d.message:
                actual.remove(d)
                break
        else:
            missing.append(want)
    extra = [f"{d.line}:{d.column}: {d.severity.value}[{d.rule}] {d.message}" for d in actual]
    return missing, extra


@pytest.fixture(scope="module")
def in_repo() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        yield


@pytest.fixture(scope="module")
def invalid_tree(in_repo: None) -> TreeResult:
    return load_tree("tests/reconciler/fixtures/invalid")


@pytest.fixture(scope="module")
def valid_tree(in_repo: None) -> TreeResult:
    return load_tree("tests/reconciler/fixtures/valid")


def _names(folder: str) -> list[str]:
    return sorted(p.name for p in (FIXTURES / folder).glob("*.yaml"))


@pytest.mark.parametrize("name", _names("invalid"))
def test_invalid_fixture_reports_exactly_its_annotated_problems(invalid_tree: TreeResult, name: str) -> None:
    """One load of the invalid folder reports each annotated problem of this file at its line and column."""
    shown = f"tests/reconciler/fixtures/invalid/{name}"
    expected = read_expectations(FIXTURES / "invalid" / name, shown)
    assert expected or name == "dup-name-a.yaml", "an invalid fixture announces its diagnostics"
    missing, extra = unmatched(invalid_tree, expected, shown)
    assert (missing, extra) == ([], [])


@pytest.mark.parametrize("name", _names("valid"))
def test_valid_fixture_has_no_errors_and_only_its_annotated_warnings(
    valid_tree: TreeResult, name: str
) -> None:
    """A valid fixture loads without errors; the only warnings are the ones annotated in it."""
    shown = f"tests/reconciler/fixtures/valid/{name}"
    expected = read_expectations(FIXTURES / "valid" / name, shown)
    assert all(e.severity == "warning" for e in expected)
    assert unmatched(valid_tree, expected, shown) == ([], [])


def test_one_load_reports_problems_of_every_broken_file(invalid_tree: TreeResult) -> None:
    """A tree of many broken files is reported in full by one load, not file by file."""
    broken = {d.file for d in invalid_tree.diagnostics if d.is_error}
    assert len(broken) >= 15
    assert not invalid_tree.valid
    assert invalid_tree.error_count == sum(1 for d in invalid_tree.diagnostics if d.is_error)
    assert invalid_tree.warning_count == len(invalid_tree.diagnostics) - invalid_tree.error_count


def test_no_diagnostic_repeats_a_literal_secret(invalid_tree: TreeResult) -> None:
    """The literal secrets pasted into the fixtures never appear in any message or path."""
    for d in invalid_tree.diagnostics:
        assert "s3cr3t" not in d.message and "s3cr3t" not in d.json_path


def test_diagnostics_are_sorted_by_file_line_and_column(invalid_tree: TreeResult) -> None:
    """Diagnostics come out in reading order: by file, then line, then column."""
    places = [(d.file, d.line, d.column) for d in invalid_tree.diagnostics]
    assert places == sorted(places)


def test_a_broken_document_does_not_hide_the_valid_ones(invalid_tree: TreeResult) -> None:
    """The valid document of a file whose other document is broken still becomes a webhook."""
    names = {hook.name for hook in invalid_tree.webhooks}
    assert "mixed-good" in names
    assert "mixed-bad" not in names
    assert "retry-never" in names  # a warning does not drop a webhook


def test_duplicate_names_keep_only_the_first_definition(invalid_tree: TreeResult) -> None:
    """Of two webhooks with one name, only the first (by file path) is kept."""
    same = [hook for hook in invalid_tree.webhooks if hook.name == "same-name"]
    assert [hook.target_url for hook in same] == ["https://a.example.com/hook"]


def test_webhooks_are_sorted_by_name(valid_tree: TreeResult) -> None:
    """The tree's webhooks are ordered by name, whatever the file order."""
    names = [hook.name for hook in valid_tree.webhooks]
    assert names == sorted(names)
    assert {"erp-packages", "minimal", "yaml-quirks", "returns-desk", "returns-audit"} <= set(names)


def test_yaml_1_1_words_keep_their_meaning_as_text(valid_tree: TreeResult) -> None:
    """`on:` is the callback key, and `yes`/`off` stay text, as editors and check-jsonschema read them."""
    hook = next(h for h in valid_tree.webhooks if h.name == "yaml-quirks")
    assert hook.callback == Callback("https://quirks.example.com/outcomes", frozenset({"failed", "dead"}))
    assert hook.additional_headers == {"X-Flag": "yes"}
    assert hook.labels == {"enabled": "off", "tier": "1"}


def test_event_types_documents_extend_the_catalogue(valid_tree: TreeResult) -> None:
    """An event type declared by an EventTypes document is known to every webhook of the tree."""
    file = next(f for f in valid_tree.files if f.path.endswith("multi-document.yaml"))
    assert file.event_types == ("package.status.returned",)
    assert not [d for d in valid_tree.diagnostics if d.rule == "unknown-event-type"]


def test_multi_document_file_keeps_each_document_index_and_line(valid_tree: TreeResult) -> None:
    """Webhooks from one file record which document they came from and where it starts."""
    desk = next(h for h in valid_tree.webhooks if h.name == "returns-desk")
    audit = next(h for h in valid_tree.webhooks if h.name == "returns-audit")
    assert (desk.source.document, desk.source.line) == (1, 10)
    assert (audit.source.document, audit.source.line) == (2, 18)
    assert desk.source.file == "tests/reconciler/fixtures/valid/multi-document.yaml"
    assert audit.active is False


def test_table_routes_the_loaded_webhooks(valid_tree: TreeResult) -> None:
    """The tree's routing table, tagged with its revision, reaches the active webhooks that match."""
    table = valid_tree.table()
    assert table.revision == valid_tree.revision
    assert [h.name for h in table.route("package.status.returned")] == ["returns-desk", "yaml-quirks"]
    assert [h.name for h in table.route("package.created", {"channel_id": 3})] == [
        "erp-packages",
        "yaml-quirks",
    ]


# --- discovery and I/O ------------------------------------------------------------------------------------


WEBHOOK = """\
apiVersion: webhooks/v1
kind: Webhook
metadata:
  name: {name}
spec:
  target_url: https://{name}.example.com/hook
  event_type: {event}
"""


def write(path: Path, name: str, event: str = "package.created") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(WEBHOOK.format(name=name, event=event), encoding="utf-8")
    return path


def test_missing_directory_is_a_diagnostic_not_an_exception(tmp_path: Path) -> None:
    """A directory that does not exist gives one `io` error and an empty, invalid tree."""
    result = load_tree(tmp_path / "nope")
    assert [(d.rule, d.severity.value) for d in result.diagnostics] == [("io", "error")]
    assert result.webhooks == () and not result.valid


def test_discovery_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path: Path) -> None:
    """YAML files in subdirectories are loaded in path order; hidden entries and other extensions are not."""
    write(tmp_path / "b.yaml", "b")
    write(tmp_path / "team" / "a.yml", "a")
    write(tmp_path / ".hidden.yaml", "hidden")
    write(tmp_path / ".git" / "c.yaml", "git")
    write(tmp_path / "notes.txt", "text")
    result = load_tree(tmp_path)
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in result.files] == ["b.yaml", "team/a.yml"]
    assert [h.name for h in result.webhooks] == ["a", "b"]


def test_symlink_loops_are_walked_once(tmp_path: Path) -> None:
    """A symlink pointing back up the tree neither hangs the loader nor loads a file twice."""
    write(tmp_path / "sub" / "a.yaml", "a")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    result = load_tree(tmp_path)
    assert [h.name for h in result.webhooks] == ["a"]
    assert result.valid


def test_a_single_file_can_be_checked_on_its_own(tmp_path: Path) -> None:
    """Given a file instead of a directory, the loader checks just that file."""
    path = write(tmp_path / "one.yaml", "one")
    write(tmp_path / "other.yaml", "other")
    result = load_tree(path)
    assert [h.name for h in result.webhooks] == ["one"]


def test_not_utf8_is_an_encoding_diagnostic_at_the_bad_byte(tmp_path: Path) -> None:
    """A file with invalid UTF-8 gets an `encoding` error at the line and column of the first bad byte."""
    (tmp_path / "latin1.yaml").write_bytes(b"apiVersion: webhooks/v1\nkind: Caf\xe9\n")
    (d,) = load_tree(tmp_path).diagnostics
    assert (d.rule, d.line, d.column) == ("encoding", 2, 10)


def test_unreadable_file_is_an_io_diagnostic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be read gives an `io` error for that file; the rest of the tree still loads."""
    write(tmp_path / "ok.yaml", "ok")
    broken = write(tmp_path / "secret.yaml", "secret")

    def fake_open(path: str, mode: str = "r") -> IO[bytes]:
        if Path(path) == broken:  # as root, permissions cannot make a file unreadable: pretend
            raise PermissionError(13, "Permission denied")
        return open(path, mode)

    monkeypatch.setattr(filecheck, "open", fake_open, raising=False)
    result = load_tree(tmp_path)
    assert [(Path(d.file).name, d.rule) for d in result.diagnostics] == [("secret.yaml", "io")]
    assert "Permission denied" in result.diagnostics[0].message
    assert [h.name for h in result.webhooks] == ["ok"]


def test_empty_directory_is_valid_and_empty(tmp_path: Path) -> None:
    """An empty directory is a valid tree without webhooks."""
    result = load_tree(tmp_path)
    assert result.valid and result.webhooks == () and result.files == ()


def test_paths_are_shown_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files under the working directory are shown relative to it; others as the directory was given."""
    write(tmp_path / "hooks" / "a.yaml", "a")
    monkeypatch.chdir(tmp_path)
    assert load_tree(tmp_path / "hooks").files[0].path == "hooks/a.yaml"
    assert load_tree("hooks").directory == "hooks"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_tree("../hooks").files[0].path == "../hooks/a.yaml"


# --- revision -----------------------------------------------------------------------------------------------


def test_revision_depends_on_content_and_names_not_on_location(tmp_path: Path) -> None:
    """Identical trees in two places share a revision; a changed byte or a renamed file changes it."""
    write(tmp_path / "one" / "a.yaml", "a")
    write(tmp_path / "two" / "a.yaml", "a")
    first, second = load_tree(tmp_path / "one"), load_tree(tmp_path / "two")
    assert first.revision == second.revision
    assert first.revision.startswith("sha256:") and len(first.revision) == len("sha256:") + 64
    (tmp_path / "two" / "a.yaml").rename(tmp_path / "two" / "b.yaml")
    assert load_tree(tmp_path / "two").revision != first.revision
    write(tmp_path / "one" / "a.yaml", "a", event="package.status.shipped")
    assert load_tree(tmp_path / "one").revision != first.revision


def test_file_digest_is_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    """Each file result carries the SHA-256 of the file's bytes."""
    import hashlib

    path = write(tmp_path / "a.yaml", "a")
    (file,) = load_tree(tmp_path).files
    assert file.digest == hashlib.sha256(path.read_bytes()).hexdigest()


# --- incremental loading ------------------------------------------------------------------------------------


@pytest.fixture
def parse_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files the loader parses, in order."""
    calls: list[str] = []
    real = loader.load_file

    def counting(path: Path, display: str, limits: Limits = DEFAULT_LIMITS) -> LoadedFile:
        calls.append(Path(display).name)
        return real(path, display, limits)

    monkeypatch.setattr(loader, "load_file", counting)
    return calls


def test_reload_parses_only_changed_new_files(tmp_path: Path, parse_log: list[str]) -> None:
    """A second load re-parses only the file that changed and the file that was added; removed ones vanish."""
    for name in ("a", "b", "c"):
        write(tmp_path / f"{name}.yaml", name)
    tree = TreeLoader(tmp_path)
    tree.load()
    assert sorted(parse_log) == ["a.yaml", "b.yaml", "c.yaml"]
    parse_log.clear()
    assert tree.load().valid
    assert parse_log == []
    write(tmp_path / "b.yaml", "b", event="shipment.created")
    write(tmp_path / "d.yaml", "d")
    (tmp_path / "c.yaml").unlink()
    result = tree.load()
    assert sorted(parse_log) == ["b.yaml", "d.yaml"]
    assert [h.name for h in result.webhooks] == ["a", "b", "d"]
    assert next(h for h in result.webhooks if h.name == "b").event_types == ("shipment.created",)


def test_reload_notices_a_same_size_change_with_an_unchanged_mtime(
    tmp_path: Path, parse_log: list[str]
) -> None:
    """A recent file rewritten with the same size and mtime (coarse clock) is still re-parsed."""
    path = write(tmp_path / "a.yaml", "aaa")
    stat = path.stat()
    tree = TreeLoader(tmp_path)
    tree.load()
    write(path, "bbb")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    parse_log.clear()
    assert [h.name for h in tree.load().webhooks] == ["bbb"]
    assert parse_log == ["a.yaml"]


def test_catalogue_warnings_follow_the_tree_not_the_file_cache(tmp_path: Path, parse_log: list[str]) -> None:
    """A new EventTypes file silences the unknown-event-type warning of an unchanged, cached file."""
    write(tmp_path / "hook.yaml", "hook", event="package.status.lost")
    tree = TreeLoader(tmp_path)
    assert [d.rule for d in tree.load().diagnostics] == ["unknown-event-type"]
    (tmp_path / "types.yaml").write_text(
        "apiVersion: webhooks/v1\nkind: EventTypes\nmetadata: {name: extra}\nspec:\n"
        "  event_types: [{name: package.status.lost, description: The carrier lost the package.}]\n",
        encoding="utf-8",
    )
    parse_log.clear()
    result = tree.load()
    assert result.diagnostics == ()
    assert parse_log == ["types.yaml"]


# --- from documents to Webhook values -----------------------------------------------------------------------


def test_build_webhook_applies_the_spec_defaults() -> None:
    """Fields left out take SPEC's defaults: active, 10 s timeout, default retries, nothing else."""
    hook = build_webhook(
        {"metadata": {"name": "m"}, "spec": {"target_url": "https://m.example.com", "event_type": "a.b"}},
        Source("m.yaml", 3, 1),
    )
    assert (hook.active, hook.timeout_seconds, hook.retry, hook.auth, hook.callback) == (
        True,
        10.0,
        None,
        None,
        None,
    )
    assert (hook.event_types, hook.secret_key, hook.additional_headers, hook.match, hook.labels) == (
        ("a.b",),
        None,
        {},
        {},
        {},
    )
    assert hook.source == Source("m.yaml", 3, 1)


def test_build_webhook_turns_references_auth_retry_and_callback_into_values() -> None:
    """Secret references, both auth kinds, retry settings and the callback become value objects."""
    spec = {
        "target_url": "https://x.example.com",
        "event_type": ["a.*", "b.**"],
        "status": "inactive",
        "secret_key": {"file": "/run/secrets/x"},
        "additional_headers": {"X-A": "1", "X-B": {"env": "B"}},
        "config": {"timeout": 3, "auth": {"type": "basic", "username": "u", "password": {"env": "P"}}},
        "retry_countdown_config": {"choice": "linear", "kwargs": {"base": 60}, "jitter": 0.5},
        "callback": {"url": "https://cb.example.com"},
    }
    hook = build_webhook({"metadata": {"name": "x"}, "spec": spec}, Source("x.yaml"))
    assert hook.active is False and hook.timeout_seconds == 3.0
    assert hook.secret_key == SecretRef("file", "/run/secrets/x")
    assert hook.additional_headers == {"X-A": "1", "X-B": SecretRef("env", "B")}
    assert hook.auth == BasicAuth("u", SecretRef("env", "P"))
    assert hook.retry == RetryConfig("linear", {"base": 60}, max_attempts=None, jitter=0.5)
    assert hook.callback == Callback("https://cb.example.com", frozenset({"dead"}))
    token = {"type": "token", "url": "https://t.example.com", "username": "u", "password": {"file": "/p"}}
    spec["config"] = {"auth": {**token, "token_key": "access"}}
    auth = build_webhook({"metadata": {"name": "x"}, "spec": spec}, Source("x.yaml")).auth
    assert auth == TokenAuth("https://t.example.com", "u", SecretRef("file", "/p"), token_key="access")


def test_build_webhook_shares_equal_values_but_keeps_their_types() -> None:
    """Webhooks with equal labels share one dict; a match on 1, true or 1.0 keeps its own type."""

    def hook(match: object, labels: dict[str, str]) -> Webhook:
        spec = {"target_url": "https://x.example.com", "event_type": "a.b", "config": {"match": {"k": match}}}
        return build_webhook({"metadata": {"name": "x", "labels": labels}, "spec": spec}, Source("x.yaml"))

    hooks = [hook(value, {"team": "t"}) for value in (1, True, 1.0, [1])]
    assert [type(h.match["k"]) for h in hooks] == [int, bool, float, list]
    assert all(h.labels is hooks[0].labels and h.labels == {"team": "t"} for h in hooks)
    assert hook(1, {"team": "u"}).labels == {"team": "u"}


def test_file_result_lists_only_per_file_problems(tmp_path: Path) -> None:
    """A file's own result holds its per-file diagnostics; cross-file ones appear only at tree level."""
    write(tmp_path / "a.yaml", "same")
    write(tmp_path / "b.yaml", "same")
    result = load_tree(tmp_path)
    assert all(isinstance(f, FileResult) and f.diagnostics == () for f in result.files)
    assert [(Path(d.file).name, d.rule) for d in result.diagnostics] == [("b.yaml", "duplicate-name")]


def test_a_large_load_shared_with_worker_processes_gives_the_same_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parse_log: list[str]
) -> None:
    """Checking files in forked worker processes yields exactly the tree a sequential load yields."""
    for i in range(9):
        write(tmp_path / f"hook-{i}.yaml", f"hook-{i}", event="package.created" if i % 3 else "package.lost")
    write(tmp_path / "dup.yaml", "hook-1")
    (tmp_path / "broken.yaml").write_text("apiVersion: webhooks/v1\nkind: [\n", encoding="utf-8")
    sequential = load_tree(tmp_path)
    parse_log.clear()
    monkeypatch.setattr(loader, "_worker_count", lambda files: 3)
    shared = load_tree(tmp_path)
    assert 0 < len(parse_log) < 11  # this process checked only its share; forked workers did the rest
    assert shared == sequential
    assert [h.source for h in shared.webhooks] == [h.source for h in sequential.webhooks]
    assert {d.rule for d in shared.diagnostics} == {"yaml-syntax", "duplicate-name", "unknown-event-type"}
