"""Resolving secret references (``{env: NAME}``, ``{file: PATH}``, SPEC section 1).

Files are read afresh on every call, so a rotated secret (a Kubernetes secret volume, a Vault agent file)
takes effect without a restart. Errors name the reference and never contain a value, not even part of one.
"""

from __future__ import annotations

from collections.abc import Mapping

from dispatcher.errors import SecretError
from reconciler.model import SecretRef


def resolve_secret(ref: SecretRef, environ: Mapping[str, str]) -> str:
    """The value ``ref`` points at. Raises SecretError when it is unset, unreadable or empty."""
    if ref.source == "env":
        value = environ.get(ref.name)
        if value is None:
            raise SecretError(f"secret {ref}: environment variable {ref.name} is not set")
    elif ref.source == "file":
        value = _read_secret_file(ref)
    else:
        raise SecretError(f"secret {ref}: unknown source {ref.source!r}")
    if not value:
        raise SecretError(f"secret {ref}: the value is empty")
    return value


def _read_secret_file(ref: SecretRef) -> str:
    try:
        with open(ref.name, "rb") as f:
            raw = f.read()
    except OSError as exc:
        # strerror only: str(exc) is fine today, but the message must stay value-free whatever Python adds.
        raise SecretError(
            f"secret {ref}: cannot read the file ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # The codec's message quotes the offending byte: part of the secret.
        raise SecretError(f"secret {ref}: the file is not valid UTF-8") from None
    # `echo secret > file` and editors add a final newline that is not part of the secret.
    return text.rstrip("\r\n")
