"""The messages between the dispatcher and its delivery processes (``dispatcher.transport``), one type each.

Named tuples: they pickle as a tuple plus one reference to their class (about 40 bytes and 4 us more per
round trip than a plain tuple, measured: noise beside an attempt's cost in the parent), and both ends import
them from here (not from ``dispatcher.transport``, which is the child's ``__main__``). Every request carries
an id; the reply to it carries the same id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from reconciler.model import TokenAuth


class AttemptRequest(NamedTuple):
    """Make one HTTP attempt (an ``OutboundRequest``)."""

    request_id: int
    url: str
    body: bytes
    headers: dict[str, str]
    timeout_seconds: float
    basic_auth: tuple[str, str] | None


class TokenRequest(NamedTuple):
    """Run the token flow of ``config.auth.type: token``."""

    request_id: int
    auth: TokenAuth
    password: str
    timeout_seconds: float


class AttemptReply(NamedTuple):
    """What one attempt did (an ``AttemptRecord``)."""

    request_id: int
    started_at: float
    duration_seconds: float
    status_code: int | None
    error: str | None
    response_headers: dict[str, str]
    response_excerpt: str


class TokenReply(NamedTuple):
    """The token, or why there is none (never holding the password or the token)."""

    request_id: int
    token: str | None
    error: str | None


Request = AttemptRequest | TokenRequest
Reply = AttemptReply | TokenReply
