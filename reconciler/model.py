"""Value objects shared by the reconciler and the dispatcher.

Everything here is a frozen dataclass: built once by the loader, never mutated. Mappings inside them are
plain dicts by convention treated as read-only (they are never exposed for mutation by the loader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from reconciler.retry import RetryPolicy, build_retry_policy

API_VERSION = "webhooks/v1"
KIND = "Webhook"

#: Delivery outcomes a webhook's ``callback.on`` may list.
CALLBACK_OUTCOMES = ("delivered", "failed", "dead")


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in one place: what the reporters render and the CLI counts."""

    severity: Severity
    rule: str  # stable rule id, e.g. "schema", "yaml-syntax", "duplicate-name"
    message: str  # never contains a secret value
    file: str  # path as given to the loader (relative to the working directory when possible)
    line: int  # 1-based
    column: int  # 1-based
    json_path: str = "$"  # e.g. "$.spec.target_url"; "$" for a whole document or file

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A reference to a secret kept outside Git: ``{env: NAME}`` or ``{file: PATH}``.

    The repr and str never show anything but the reference itself; the value is resolved by the dispatcher.
    """

    source: Literal["env", "file"]
    name: str  # environment variable name, or file path

    def __str__(self) -> str:
        return f"{{{self.source}: {self.name}}}"


#: A header value is either a plain string or a secret reference.
HeaderValue = str | SecretRef


@dataclass(frozen=True, slots=True)
class BasicAuth:
    username: str
    password: SecretRef
    type: Literal["basic"] = "basic"


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """dj-whisperer's token flow: POST credentials to ``url``, read ``token_key`` from the JSON answer,
    send ``Authorization: header_format.format(token)`` with the delivery."""

    url: str
    username: str
    password: SecretRef
    username_field: str = "username"
    password_field: str = "password"
    token_key: str = "key"
    header_format: str = "Token {}"
    type: Literal["token"] = "token"


Auth = BasicAuth | TokenAuth


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """``spec.retry_countdown_config``: the admin screen's countdown choices plus ``schedule``.

    ``kwargs`` keys per choice: fixed{seconds}; linear{base, limit?}; exponential{base, factor=1, limit?};
    random{min_value, max_value}; schedule{delays: [seconds, ...]}.
    """

    choice: Literal["fixed", "linear", "exponential", "random", "schedule"]
    kwargs: dict[str, Any]
    max_attempts: int | None = None  # total attempts, the first included; None = choice's default
    jitter: float = 0.0  # fraction in [0, 1], e.g. 0.2 = +-20 %


@dataclass(frozen=True, slots=True)
class Callback:
    url: str
    on: frozenset[str] = frozenset({"dead"})


@dataclass(frozen=True, slots=True)
class Source:
    """Where a webhook was defined: used in messages and plans."""

    file: str
    line: int = 1
    document: int = 0  # index of the YAML document within the file


@dataclass(frozen=True, slots=True)
class Webhook:
    """One validated webhook definition (one YAML document)."""

    name: str
    target_url: str
    event_types: tuple[str, ...]
    active: bool = True
    secret_key: SecretRef | None = None
    additional_headers: dict[str, HeaderValue] = field(default_factory=dict)
    timeout_seconds: float = 10.0
    auth: Auth | None = None
    match: dict[str, Any] = field(default_factory=dict)
    #: ``config.scope``, the OMS's (dj-whisperer's) routing rule; None when the file has none. See
    #: ``reconciler.routing.scope_admits``: ``{}`` is not the same as None.
    scope: dict[str, Any] | None = None
    retry: RetryConfig | None = None  # None = the default schedule (SPEC section 5)
    callback: Callback | None = None
    labels: dict[str, str] = field(default_factory=dict)
    source: Source = field(default=Source("<memory>"), compare=False)
    #: The schedule ``retry`` describes, built once with the webhook (when the tree is loaded) and asked by
    #: every attempt: the one ``reconcile`` judged. A ``retry`` that does not fit its choice is a ValueError.
    retry_policy: RetryPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "retry_policy", build_retry_policy(self.retry))

    def secret_refs(self) -> tuple[SecretRef, ...]:
        """Every secret reference this webhook uses (for resolution and for redaction)."""
        refs: list[SecretRef] = []
        if self.secret_key is not None:
            refs.append(self.secret_key)
        refs.extend(v for v in self.additional_headers.values() if isinstance(v, SecretRef))
        if self.auth is not None:
            refs.append(self.auth.password)
        return tuple(refs)
