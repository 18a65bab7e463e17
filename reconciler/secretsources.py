"""Where secrets may come from: the operator's secret-source policy (SPEC section 1).

A webhook file names its secrets (``{env: NAME}``, ``{file: PATH}``); the operator decides which of those
names the dispatcher may read: files only inside ``--secrets-dir`` directories (default
``$CREDENTIALS_DIRECTORY`` when set, as systemd's ``LoadCredential=`` provides, else ``/run/secrets``, where
Docker and Kubernetes mount them) and variables only matching a ``--secret-env`` glob (default ``WEBHOOK_*``).

This module holds the policy value and the lexical checks both commands share. ``reconcile`` can only judge
a path by its text (it runs in CI, not where the secrets are); the dispatcher also resolves symlinks
(``dispatcher.secrets``) before it opens anything.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_SECRETS_DIR = "/run/secrets"
DEFAULT_SECRET_ENV = ("WEBHOOK_*",)


@dataclass(frozen=True)
class SecretSources:
    """The directories ``{file:}`` references may read and the globs ``{env:}`` names must match."""

    dirs: tuple[str, ...]
    env_patterns: tuple[str, ...] = DEFAULT_SECRET_ENV

    def __post_init__(self) -> None:
        for directory in self.dirs:
            if not posixpath.isabs(directory):
                raise ValueError(f"secrets directory {directory!r} is not an absolute path")
        if not self.env_patterns:
            raise ValueError("at least one secret environment pattern is needed")

    @classmethod
    def build(
        cls,
        dirs: Iterable[str] = (),
        env_patterns: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> SecretSources:
        """The policy for these options; empty ones take the defaults (read from ``environ``)."""
        given = tuple(os.path.abspath(d) for d in dirs)
        patterns = tuple(env_patterns) or DEFAULT_SECRET_ENV
        return cls(given or default_secrets_dirs(os.environ if environ is None else environ), patterns)

    def env_allowed(self, name: str) -> bool:
        """Whether ``{env: name}`` may be read (case-sensitive, as environment names are)."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.env_patterns)

    def lexically_inside(self, path: str) -> bool:
        """Whether an absolute ``path`` is written as a path inside one of the directories (no symlinks
        resolved: that is the dispatcher's part)."""
        normal = posixpath.normpath(path)
        return any(_is_within(normal, posixpath.normpath(d)) for d in self.dirs)


def default_secrets_dirs(environ: Mapping[str, str]) -> tuple[str, ...]:
    """``$CREDENTIALS_DIRECTORY`` when set (systemd credentials), else ``/run/secrets``."""
    credentials = environ.get("CREDENTIALS_DIRECTORY", "")
    return (credentials,) if posixpath.isabs(credentials) else (DEFAULT_SECRETS_DIR,)


def has_parent_step(path: str) -> bool:
    """Whether ``path`` has a ``..`` component anywhere (refused outright, even if it would stay inside)."""
    return ".." in path.split("/")


def _is_within(path: str, directory: str) -> bool:
    return path != directory and (path.startswith(directory.rstrip("/") + "/"))
