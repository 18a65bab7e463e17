from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispatcher.errors import SecretError
from dispatcher.secrets import resolve_secret
from reconciler.model import SecretRef


def test_env_reference_reads_the_variable() -> None:
    """{env: NAME} resolves to the variable's value, untouched."""
    assert resolve_secret(SecretRef("env", "ERP_SECRET"), {"ERP_SECRET": " s3cret \n"}) == " s3cret \n"


def test_missing_env_variable_names_the_reference() -> None:
    """An unset variable raises SecretError naming the reference."""
    with pytest.raises(SecretError, match=r"\{env: ERP_SECRET\}.*not set"):
        resolve_secret(SecretRef("env", "ERP_SECRET"), {"OTHER": "x"})


def test_empty_env_variable_is_an_error() -> None:
    """An empty variable is refused: an empty HMAC key would sign with nothing."""
    with pytest.raises(SecretError, match="empty"):
        resolve_secret(SecretRef("env", "ERP_SECRET"), {"ERP_SECRET": ""})


def test_file_reference_strips_the_trailing_newline(tmp_path: Path) -> None:
    """{file: PATH} resolves to the file's text without the final newline."""
    path = tmp_path / "secret"
    path.write_bytes(b"s3cret\n")
    assert resolve_secret(SecretRef("file", str(path)), {}) == "s3cret"
    path.write_bytes(b"crlf\r\n")
    assert resolve_secret(SecretRef("file", str(path)), {}) == "crlf"


def test_file_is_read_afresh_on_every_call(tmp_path: Path) -> None:
    """A rotated secret file is picked up by the next call."""
    path = tmp_path / "secret"
    ref = SecretRef("file", str(path))
    path.write_text("old\n")
    assert resolve_secret(ref, {}) == "old"
    path.write_text("new\n")
    assert resolve_secret(ref, {}) == "new"


def test_missing_file_names_the_reference(tmp_path: Path) -> None:
    """A missing file raises SecretError naming the reference and the reason."""
    ref = SecretRef("file", str(tmp_path / "absent"))
    with pytest.raises(SecretError) as info:
        resolve_secret(ref, {})
    assert str(ref) in str(info.value)
    assert "No such file" in str(info.value)


def test_directory_instead_of_file_is_an_error(tmp_path: Path) -> None:
    """A path that is a directory is reported as unreadable."""
    with pytest.raises(SecretError, match="cannot read"):
        resolve_secret(SecretRef("file", str(tmp_path)), {})


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    """A file without read permission raises SecretError."""
    path = tmp_path / "secret"
    path.write_text("value\n")
    path.chmod(0)
    try:
        with pytest.raises(SecretError, match="cannot read"):
            resolve_secret(SecretRef("file", str(path)), {})
    finally:
        path.chmod(0o600)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    """A file holding only a newline is empty."""
    path = tmp_path / "secret"
    path.write_text("\n")
    with pytest.raises(SecretError, match="empty"):
        resolve_secret(SecretRef("file", str(path)), {})


def test_non_utf8_file_error_does_not_quote_the_bytes(tmp_path: Path) -> None:
    """A binary file is refused without echoing any byte of it."""
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfesecret-part")
    with pytest.raises(SecretError) as info:
        resolve_secret(SecretRef("file", str(path)), {})
    message = str(info.value)
    assert "UTF-8" in message
    assert "0xff" not in message and "secret-part" not in message


def test_error_messages_never_contain_the_value(tmp_path: Path) -> None:
    """No error path puts the secret value into its message."""
    value = "hunter2-very-secret"
    errors: list[str] = []
    for ref, environ in [
        (SecretRef("env", "OTHER"), {"SET": value}),
        (SecretRef("file", str(tmp_path / "nope")), {"X": value}),
    ]:
        with pytest.raises(SecretError) as info:
            resolve_secret(ref, environ)
        errors.append(str(info.value))
    assert all(value not in e for e in errors)
