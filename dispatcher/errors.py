"""Exceptions of the dispatcher.

    DispatcherError
    ├── ConfigError          the config directory cannot be loaded at start-up
    ├── StoreError           the store cannot be opened or written (disk full, corrupt, locked)
    ├── SocketPathError      the --socket path holds something that is not a stale socket
    ├── SecretError          a secret reference is refused by the secret-source policy or cannot be
    │                        resolved (unset variable, unreadable file); recorded as a failed attempt
    └── DeliveryError        one attempt failed before a response arrived
        ├── EgressDenied     the target resolves to an address the egress guard refuses
        ├── ConnectError     DNS failure, connection refused or reset
        └── AttemptTimeout   no complete response within the webhook's timeout

Foreign exceptions are translated into these in exactly one place each: ``requests``/``urllib3``/socket
errors in ``dispatcher/http.py``, ``sqlite3`` errors in ``dispatcher/store/sqlite.py``, file and environment
errors of secret references in ``dispatcher/secrets.py``.
"""

from __future__ import annotations


class DispatcherError(Exception):
    """Root of every exception the dispatcher raises on purpose."""


class ConfigError(DispatcherError):
    """The config directory cannot be loaded."""


class StoreError(DispatcherError):
    """The store failed; the event or outcome was not persisted."""


class SocketPathError(DispatcherError):
    """The socket path exists and is not a stale socket."""


class SecretError(DispatcherError):
    """A secret reference cannot be resolved. The message names the reference, never a value."""


class DeliveryError(DispatcherError):
    """An attempt failed without an HTTP response."""


class EgressDenied(DeliveryError):
    """The egress guard refused every address the target resolves to."""


class ConnectError(DeliveryError):
    """The target could not be reached (DNS, refused, reset, TLS)."""


class AttemptTimeout(DeliveryError):
    """The target did not answer within the timeout."""
