"""Store URLs (``--store``, ``DISPATCH_STORE``): which backend, where, and how to show one without its
password."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from dispatcher.errors import StoreError

POSTGRES_SCHEMES = ("postgresql", "postgres")
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]*")


@dataclass(frozen=True)
class StoreUrl:
    """A parsed store URL: ``kind`` is ``sqlite`` (with ``path``) or ``postgresql`` (with ``url``)."""

    kind: str
    url: str
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
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable store URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = _PASSWORD_PARAM.sub(r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
