"""Redaction for everything the reconciler prints about a webhook (plans, route tests).

The model only holds secret *references*, but plain strings can still carry credentials that the loader's
literal-secret rule flags without removing: a header such as ``Authorization: Bearer ...`` or a target URL
with ``user:pass@`` or ``?token=...``. Output paths call these helpers so that even a tree that is being
rejected for a literal secret never has that secret echoed back.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

#: Shown instead of a value that must not be printed (terraform's wording).
REDACTED = "(sensitive value)"
#: Shown instead of the hidden part of a URL (a marker without spaces keeps the URL readable as one token).
URL_REDACTED = "***"

# Deliberately broad: hiding a harmless header such as X-Idempotency-Key in a plan costs little, printing a
# bearer token costs a rotation.
_SENSITIVE_NAME = re.compile(
    r"auth|token|secret|passw|key|cookie|session|signature|credential", re.IGNORECASE
)


def is_sensitive_name(name: str) -> bool:
    """Whether a header or query-parameter name suggests that its value is a credential."""
    return _SENSITIVE_NAME.search(name) is not None


def redact_url(url: str) -> str:
    """The URL with its userinfo and any credential-looking query values replaced by ``URL_REDACTED``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url  # the schema rejects malformed URLs; nothing here is worth hiding from that message
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{URL_REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(_redact_query_item(item) for item in parts.query.split("&")) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_query_item(item: str) -> str:
    # Works on the raw text so that everything not redacted keeps its original encoding.
    key, sep, _ = item.partition("=")
    return f"{key}={URL_REDACTED}" if sep and is_sensitive_name(unquote_plus(key)) else item
