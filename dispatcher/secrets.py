"""Resolving secret references (``{env: NAME}``, ``{file: PATH}``, SPEC section 1) under the operator's
policy.

A webhook file can never make the dispatcher read anything the operator did not allow
(``reconciler.secretsources.SecretSources``): ``{env:}`` only names matching a ``--secret-env`` glob,
``{file:}`` only files inside a ``--secrets-dir`` once every symlink is resolved, ``..`` never. A refused
reference is never opened; its error says why. Files are read afresh on every call, and ``file_signature``
tells when one has changed (a Kubernetes secret volume's ``..data`` symlink swap, an in-place rewrite), so a
rotated secret takes effect without a restart. Errors name the reference and never contain a value, not even
part of one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from dispatcher.errors import SecretError
from reconciler.model import SecretRef
from reconciler.secretsources import SecretSources, has_parent_step

#: A secret is a key or a token: anything larger is a mistake (a wrong file), not read into memory.
MAX_SECRET_BYTES = 64 * 1024

#: What identifies one version of a secret file: (path, st_dev, st_ino, st_size, st_mtime_ns), the stat
#: following symlinks.
Signature = tuple[str, int, int, int, int]


def resolve_secret(ref: SecretRef, environ: Mapping[str, str], sources: SecretSources) -> str:
    """The value ``ref`` points at. Raises SecretError when it is refused, unset, unreadable or empty."""
    if ref.source == "env":
        if not sources.env_allowed(ref.name):
            patterns = ", ".join(sources.env_patterns)
            raise SecretError(f"secret {ref}: refused: the name matches no --secret-env pattern ({patterns})")
        value = environ.get(ref.name)
        if value is None:
            raise SecretError(f"secret {ref}: environment variable {ref.name} is not set")
    elif ref.source == "file":
        value = _read_secret_file(ref, locate_secret_file(ref, sources))
    else:
        raise SecretError(f"secret {ref}: unknown source {ref.source!r}")
    if not value:
        raise SecretError(f"secret {ref}: the value is empty")
    return value


def locate_secret_file(ref: SecretRef, sources: SecretSources) -> str:
    """The real path (symlinks resolved) a ``{file:}`` reference may be read from; SecretError if refused.

    A relative name is looked up in each secrets directory in turn; an absolute path must lie inside one
    after resolving symlinks (a secrets directory may itself be a symlink: it is resolved too).
    """
    name = ref.name
    if has_parent_step(name):
        raise SecretError(f"secret {ref}: refused: '..' is never followed")
    if "\0" in name or not name:
        raise SecretError(f"secret {ref}: refused: not a file name")
    roots = [os.path.realpath(d) for d in sources.dirs]
    candidates = [name] if os.path.isabs(name) else [os.path.join(d, name) for d in sources.dirs]
    missing: str | None = None  # inside a directory but absent: reading it says so
    for candidate in candidates:
        real = os.path.realpath(candidate)  # lstat and readlink only: nothing is opened
        if not any(_is_within(real, root) for root in roots):
            dirs = ", ".join(sources.dirs)
            raise SecretError(f"secret {ref}: refused: it resolves outside the secrets directories ({dirs})")
        if os.path.lexists(real):
            return real
        missing = missing or real
    assert missing is not None  # candidates is never empty
    return missing


def file_signature(ref: SecretRef, sources: SecretSources) -> Signature | None:
    """What the file behind ``ref`` is now (None when absent or never readable): a change means "resolve and
    read it again" (which applies the policy). Cheap enough to call every second for every reference: one
    ``stat`` that follows symlinks, so a swapped link (Kubernetes' ``..data``) shows as another inode."""
    name = ref.name
    if has_parent_step(name) or "\0" in name or not name:
        return None
    candidates = [name] if os.path.isabs(name) else [os.path.join(d, name) for d in sources.dirs]
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        return (candidate, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return None


def _read_secret_file(ref: SecretRef, path: str) -> str:
    try:
        # O_NOFOLLOW: the path was checked with its symlinks resolved; a link swapped in since is not
        # followed. O_NONBLOCK: a FIFO planted in a secrets directory cannot hang the dispatcher.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        # strerror only: str(exc) is fine today, but the message must stay value-free whatever Python adds.
        raise SecretError(
            f"secret {ref}: cannot read the file ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SecretError(f"secret {ref}: not a regular file")
        raw = b""
        while len(raw) <= MAX_SECRET_BYTES:
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
    except OSError as exc:
        raise SecretError(
            f"secret {ref}: cannot read the file ({exc.strerror or type(exc).__name__})"
        ) from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretError(f"secret {ref}: the file is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # The codec's message quotes the offending byte: part of the secret.
        raise SecretError(f"secret {ref}: the file is not valid UTF-8") from None
    # `echo secret > file` and editors add a final newline that is not part of the secret.
    return text.rstrip("\r\n")


def _is_within(path: str, root: str) -> bool:
    return path.startswith(root.rstrip("/") + "/")
