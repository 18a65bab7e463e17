"""Store URLs (``--store``, ``DISPATCH_STORE``): which backend, where, and how to show one without its
password."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from dispatcher.errors import StoreError

POSTGRES_SCHEMES = ("postgresql", "postgres")
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]*")
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/?#]*)(.*)$", re.DOTALL)


@dataclass(frozen=True)
class StoreUrl:
    """A parsed store URL: ``kind`` is ``sqlite`` (with ``path``) or ``postgresql`` (with ``url``)."""

    kind: str
    url: str = field(repr=False)  # may hold a password: see display
    path: Path | None = None

    @property
    def display(self) -> str:
        """The URL with any password replaced by ``***`` (for logs, errors, /status and metrics)."""
        return redact(self.url)


def parse(url: str) -> StoreUrl:
    """``sqlite:///PATH`` or ``postgresql://...``; anything else is a StoreError naming the redacted URL."""
    text = url.strip()
    scheme = text.split(":", 1)[0].lower() if ":" in text else ""
    if scheme == "sqlite":
        if not text.lower().startswith("sqlite:///") or len(text) <= len("sqlite:///"):
            raise StoreError(
                f"store URL {redact(text)}: expected sqlite:///PATH (three slashes, then a path)"
            )
        # As SQLAlchemy spells it: sqlite:///relative/path, sqlite:////absolute/path.
        return StoreUrl("sqlite", text, Path(unquote(text[len("sqlite:///") :])))
    if scheme in POSTGRES_SCHEMES:
        return StoreUrl("postgresql", text)
    raise StoreError(f"store URL {redact(text)}: expected sqlite:///PATH or postgresql://...")


def redact(url: str) -> str:
    """``url`` with the password of its user-info and any ``password=`` parameter replaced by ``***``."""
    match = _URL.match(url)
    if match is None:
        return _PASSWORD_PARAM.sub(r"\1***", url)
    scheme, netloc, rest = match.groups()
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    return scheme + netloc + _PASSWORD_PARAM.sub(r"\1***", rest)
