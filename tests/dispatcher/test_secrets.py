"""Secret references resolve only where the operator allows, and never leak a value into an error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispatcher.errors import SecretError
from dispatcher.secrets import file_signature, resolve_secret
from reconciler.model import SecretRef
from reconciler.secretsources import SecretSources, default_secrets_dirs

ENV_ONLY = SecretSources(("/nonexistent-secrets-dir",), ("WEBHOOK_*",))


def in_dir(path: Path) -> SecretSources:
    return SecretSources((str(path),))


def test_env_reference_reads_the_variable() -> None:
    """{env: NAME} resolves to the variable's value, untouched."""
    environ = {"WEBHOOK_ERP_SECRET": " s3cret \n"}
    assert resolve_secret(SecretRef("env", "WEBHOOK_ERP_SECRET"), environ, ENV_ONLY) == " s3cret \n"


def test_missing_env_variable_names_the_reference() -> None:
    """An unset (allowed) variable raises SecretError naming the reference."""
    with pytest.raises(SecretError, match=r"\{env: WEBHOOK_ERP\}.*not set"):
        resolve_secret(SecretRef("env", "WEBHOOK_ERP"), {"OTHER": "x"}, ENV_ONLY)


def test_empty_env_variable_is_an_error() -> None:
    """An empty variable is refused: an empty HMAC key would sign with nothing."""
    with pytest.raises(SecretError, match="empty"):
        resolve_secret(SecretRef("env", "WEBHOOK_ERP"), {"WEBHOOK_ERP": ""}, ENV_ONLY)


def test_env_name_outside_every_pattern_is_refused_without_reading_it() -> None:
    """A variable no --secret-env glob matches is refused, and its value is never looked up."""

    class Watching(dict[str, str]):
        def get(self, key: str, default: object = None) -> object:  # type: ignore[override]  # a spy
            raise AssertionError(f"{key} was read")

        def __getitem__(self, key: str) -> str:
            raise AssertionError(f"{key} was read")

    with pytest.raises(SecretError) as info:
        resolve_secret(SecretRef("env", "AWS_SECRET_ACCESS_KEY"), Watching(), ENV_ONLY)
    assert "AWS_SECRET_ACCESS_KEY" in str(info.value) and "refused" in str(info.value)


def test_env_patterns_are_case_sensitive_globs() -> None:
    """Each pattern is a shell glob matched case-sensitively; any matching pattern allows the name."""
    sources = SecretSources(("/s",), ("WEBHOOK_*", "ERP_?_TOKEN"))
    assert sources.env_allowed("WEBHOOK_A") and sources.env_allowed("ERP_1_TOKEN")
    assert not sources.env_allowed("webhook_a") and not sources.env_allowed("ERP_12_TOKEN")
    assert not sources.env_allowed("MY_WEBHOOK_A")


def test_defaults_are_credentials_directory_or_run_secrets_and_webhook_star() -> None:
    """No options: $CREDENTIALS_DIRECTORY when set (systemd), else /run/secrets; env names WEBHOOK_*."""
    assert default_secrets_dirs({}) == ("/run/secrets",)
    assert default_secrets_dirs({"CREDENTIALS_DIRECTORY": "/run/credentials/d.service"}) == (
        "/run/credentials/d.service",
    )
    built = SecretSources.build(environ={})
    assert built.dirs == ("/run/secrets",) and built.env_patterns == ("WEBHOOK_*",)
    assert SecretSources.build(["/a", "/b"], ["X_*"], environ={}).dirs == ("/a", "/b")


def test_relative_name_resolves_inside_the_secrets_directory(tmp_path: Path) -> None:
    """{file: NAME} reads NAME inside the secrets directory, without the final newline."""
    (tmp_path / "erp").write_bytes(b"s3cret\n")
    (tmp_path / "crlf").write_bytes(b"crlf\r\n")
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "key").write_bytes(b"nested\n")
    assert resolve_secret(SecretRef("file", "erp"), {}, in_dir(tmp_path)) == "s3cret"
    assert resolve_secret(SecretRef("file", "crlf"), {}, in_dir(tmp_path)) == "crlf"
    assert resolve_secret(SecretRef("file", "team/key"), {}, in_dir(tmp_path)) == "nested"


def test_relative_name_is_looked_up_in_each_directory_in_turn(tmp_path: Path) -> None:
    """With several --secrets-dir, a relative name is read from the first directory that has it."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (second / "erp").write_text("from-second\n")
    sources = SecretSources((str(first), str(second)))
    assert resolve_secret(SecretRef("file", "erp"), {}, sources) == "from-second"


def test_absolute_path_inside_a_secrets_directory_is_read(tmp_path: Path) -> None:
    """An absolute path that lies inside a secrets directory is read."""
    (tmp_path / "erp").write_text("abs\n")
    assert resolve_secret(SecretRef("file", str(tmp_path / "erp")), {}, in_dir(tmp_path)) == "abs"


def test_absolute_path_outside_every_secrets_directory_is_refused(tmp_path: Path) -> None:
    """An absolute path outside the secrets directories is refused, naming the reference."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "other").write_text("marker-outside\n")
    ref = SecretRef("file", str(tmp_path / "other"))
    with pytest.raises(SecretError) as info:
        resolve_secret(ref, {}, in_dir(tmp_path / "secrets"))
    assert str(ref) in str(info.value) and "refused" in str(info.value)
    assert "marker-outside" not in str(info.value)


@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "..", "a/..", "{dir}/../{dir_name}/erp", "{dir}/sub/../erp"]
)
def test_a_parent_step_anywhere_is_refused_even_when_it_would_stay_inside(tmp_path: Path, name: str) -> None:
    """``..`` is never followed, relative or absolute, even when the result would lie inside."""
    secrets = tmp_path / "secrets"
    (secrets / "sub").mkdir(parents=True)
    (secrets / "erp").write_text("marker-dotdot\n")
    (tmp_path / "x").write_text("marker-dotdot\n")
    ref = SecretRef("file", name.format(dir=secrets, dir_name=secrets.name))
    with pytest.raises(SecretError, match=r"refused: '\.\.' is never followed"):
        resolve_secret(ref, {}, in_dir(secrets))


def test_a_symlink_inside_the_directory_pointing_outside_is_refused(tmp_path: Path) -> None:
    """A symlink in a secrets directory whose target lies outside it is refused, by name and by path."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (tmp_path / "host-file").write_text("marker-link\n")
    (secrets / "escape").symlink_to(tmp_path / "host-file")
    for ref in (SecretRef("file", "escape"), SecretRef("file", str(secrets / "escape"))):
        with pytest.raises(SecretError, match="refused: it resolves outside"):
            resolve_secret(ref, {}, in_dir(secrets))


def test_a_symlink_into_the_directory_from_outside_is_read(tmp_path: Path) -> None:
    """What counts is where a path resolves: an outside link to a file inside a secrets directory is read."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "erp").write_text("via-link\n")
    (tmp_path / "link").symlink_to(secrets / "erp")
    assert resolve_secret(SecretRef("file", str(tmp_path / "link")), {}, in_dir(secrets)) == "via-link"


def test_a_secrets_directory_that_is_itself_a_symlink_works(tmp_path: Path) -> None:
    """A secrets directory given as a symlink (e.g. /run/secrets -> /var/run/secrets) is resolved too."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "erp").write_text("linked-dir\n")
    (tmp_path / "secrets").symlink_to(real)
    sources = in_dir(tmp_path / "secrets")
    assert resolve_secret(SecretRef("file", "erp"), {}, sources) == "linked-dir"
    assert resolve_secret(SecretRef("file", str(tmp_path / "secrets" / "erp")), {}, sources) == "linked-dir"
    assert resolve_secret(SecretRef("file", str(real / "erp")), {}, sources) == "linked-dir"


def test_a_refused_fifo_is_never_opened(tmp_path: Path) -> None:
    """A refused path is not opened: a FIFO outside the directories (whose open would block) is refused."""
    (tmp_path / "secrets").mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SecretError, match="refused"):
        resolve_secret(SecretRef("file", str(fifo)), {}, in_dir(tmp_path / "secrets"))
    with pytest.raises(SecretError, match="refused"):
        resolve_secret(SecretRef("file", "../fifo"), {}, in_dir(tmp_path / "secrets"))


def test_a_refused_file_is_never_read(tmp_path: Path) -> None:
    """A refused path is not read: its access time is untouched (strictatime-independent: a marker FIFO
    would block on open, a regular file's content never appears)."""
    (tmp_path / "secrets").mkdir()
    target = tmp_path / "target"
    target.write_text("marker-read\n")
    os.utime(target, (1_000_000, 1_000_000))
    with pytest.raises(SecretError) as info:
        resolve_secret(SecretRef("file", str(target)), {}, in_dir(tmp_path / "secrets"))
    assert "marker-read" not in str(info.value)
    assert target.stat().st_atime == 1_000_000


def test_a_fifo_inside_the_directory_does_not_hang(tmp_path: Path) -> None:
    """A FIFO planted inside a secrets directory is an error, not a blocked dispatcher."""
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SecretError, match="not a regular file"):
        resolve_secret(SecretRef("file", "fifo"), {}, in_dir(tmp_path))


def test_file_is_read_afresh_on_every_call(tmp_path: Path) -> None:
    """A rotated secret file is picked up by the next call."""
    path = tmp_path / "secret"
    ref = SecretRef("file", "secret")
    path.write_text("old\n")
    assert resolve_secret(ref, {}, in_dir(tmp_path)) == "old"
    path.write_text("new\n")
    assert resolve_secret(ref, {}, in_dir(tmp_path)) == "new"


def test_signature_changes_on_rewrite_and_is_none_when_refused_or_absent(tmp_path: Path) -> None:
    """file_signature tells a rewritten file from the same one, and is None for refused or missing files."""
    path = tmp_path / "secret"
    path.write_text("one\n")
    ref = SecretRef("file", "secret")
    before = file_signature(ref, in_dir(tmp_path))
    assert before is not None and before == file_signature(ref, in_dir(tmp_path))
    path.write_text("two-two\n")
    assert file_signature(ref, in_dir(tmp_path)) not in (None, before)
    assert file_signature(SecretRef("file", "../secret"), in_dir(tmp_path)) is None
    assert file_signature(SecretRef("file", "absent"), in_dir(tmp_path)) is None


def test_missing_file_names_the_reference(tmp_path: Path) -> None:
    """A missing file raises SecretError naming the reference and the reason."""
    ref = SecretRef("file", "absent")
    with pytest.raises(SecretError) as info:
        resolve_secret(ref, {}, in_dir(tmp_path))
    assert str(ref) in str(info.value)
    assert "No such file" in str(info.value)


def test_directory_instead_of_file_is_an_error(tmp_path: Path) -> None:
    """A path that is a directory is reported as not a regular file."""
    (tmp_path / "sub").mkdir()
    with pytest.raises(SecretError, match="not a regular file"):
        resolve_secret(SecretRef("file", "sub"), {}, in_dir(tmp_path))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    """A file without read permission raises SecretError."""
    path = tmp_path / "secret"
    path.write_text("value\n")
    path.chmod(0)
    try:
        with pytest.raises(SecretError, match="cannot read"):
            resolve_secret(SecretRef("file", "secret"), {}, in_dir(tmp_path))
    finally:
        path.chmod(0o600)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    """A file holding only a newline is empty."""
    (tmp_path / "secret").write_text("\n")
    with pytest.raises(SecretError, match="empty"):
        resolve_secret(SecretRef("file", "secret"), {}, in_dir(tmp_path))


def test_oversized_file_is_an_error(tmp_path: Path) -> None:
    """A file larger than any secret (64 KiB) is refused rather than read into memory."""
    (tmp_path / "secret").write_bytes(b"a" * (64 * 1024 + 1))
    with pytest.raises(SecretError, match="larger than"):
        resolve_secret(SecretRef("file", "secret"), {}, in_dir(tmp_path))


def test_non_utf8_file_error_does_not_quote_the_bytes(tmp_path: Path) -> None:
    """A binary file is refused without echoing any byte of it."""
    (tmp_path / "secret").write_bytes(b"\xff\xfesecret-part")
    with pytest.raises(SecretError) as info:
        resolve_secret(SecretRef("file", "secret"), {}, in_dir(tmp_path))
    message = str(info.value)
    assert "UTF-8" in message
    assert "0xff" not in message and "secret-part" not in message


def test_error_messages_never_contain_the_value(tmp_path: Path) -> None:
    """No error path puts the secret value into its message."""
    value = "hunter2-very-secret"
    (tmp_path / "outside").write_text(value)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    errors: list[str] = []
    for ref, environ in [
        (SecretRef("env", "WEBHOOK_OTHER"), {"WEBHOOK_SET": value}),
        (SecretRef("env", "SET"), {"SET": value}),
        (SecretRef("file", "nope"), {"X": value}),
        (SecretRef("file", str(tmp_path / "outside")), {}),
        (SecretRef("file", "../outside"), {}),
    ]:
        with pytest.raises(SecretError) as info:
            resolve_secret(ref, environ, in_dir(secrets))
        errors.append(str(info.value))
    assert all(value not in e for e in errors)
