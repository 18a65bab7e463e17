"""Outbound HTTP: the only module that imports ``requests`` and ``urllib3``.

One ``requests.Session`` serves every endpoint, with a connection pool per origin. Its adapter builds urllib3
connections whose ``_new_conn`` resolves the host through the egress guard and connects to exactly the checked
address (so a DNS answer cannot change between check and connect); the Host header, TLS SNI and certificate
verification still use the hostname from the URL.

``config.timeout`` bounds the whole attempt (DNS, connect, TLS, request, every 1xx, status line, headers and
the excerpt of the body): each blocking socket operation gets only the time left until the attempt's deadline
(``dispatcher/deadline.py``), so a receiver trickling bytes cannot hold a delivery thread past it.

Every foreign exception (``requests``, ``urllib3``, ``http.client``, ``ssl``, ``OSError``) is translated here:
``send`` and ``post_json`` turn it into ``AttemptRecord.error``; ``fetch_token`` raises a ``DeliveryError``.
Messages never contain header values, request bodies or tokens.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlencode

import requests
import requests.adapters
import requests.auth
import requests.structures
import urllib3
import urllib3.exceptions
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from dispatcher.deadline import (
    DeadlineSocket,
    attempt_deadline,
    bound,
    call_within,
    current_deadline,
    time_left,
)
from dispatcher.egress import CheckedAddress, EgressPolicy, Resolver, resolve_checked
from dispatcher.errors import AttemptTimeout, ConnectError, DeliveryError, EgressDenied
from dispatcher.outbound import OutboundRequest, json_request
from dispatcher.store.base import AttemptRecord
from reconciler.model import TokenAuth

EXCERPT_BYTES = 4096
#: A token answer is read whole (it is parsed), but not without bound.
TOKEN_RESPONSE_LIMIT_BYTES = 64 * 1024
#: After the excerpt, up to this much more is read and discarded so the connection can be reused; a bigger
#: body costs less as a new connection than as bytes nobody keeps.
DRAIN_LIMIT_BYTES = 64 * 1024
#: Response headers kept per attempt (for ``deliveries show`` and Retry-After); the rest is noise or secrets.
HEADERS_OF_INTEREST = (
    "Retry-After",
    "Content-Type",
    "Content-Length",
    "Location",
    "Server",
    "X-Request-Id",
    "Date",
)
USER_AGENT = "webhooks-as-code-dispatcher/0.1"

#: Opens a connected TCP socket: (family, sockaddr, timeout_seconds, source_address, socket_options).
Connector = Callable[[int, tuple[Any, ...], float | None, tuple[str, int] | None, Any], socket.socket]


def connect_socket(
    family: int,
    sockaddr: tuple[Any, ...],
    timeout_seconds: float | None,
    source_address: tuple[str, int] | None,
    socket_options: Any,
) -> socket.socket:
    """Open a TCP connection to one already-checked address (what urllib3's ``create_connection`` does, minus
    its own DNS lookup)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        for option in socket_options or ():
            sock.setsockopt(*option)
        sock.settimeout(timeout_seconds)
        if source_address:
            sock.bind(source_address)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class _Egress:
    """What a guarded connection needs to open its socket: the policy, the resolver and the connector."""

    policy: EgressPolicy
    resolver: Resolver
    connect: Connector

    def open(self, conn: HTTPConnection) -> socket.socket:
        host = conn._dns_host  # urllib3 keeps a trailing dot here for DNS; `host` drops it for SNI and Host
        port = conn.port if conn.port is not None else conn.default_port
        timeout = conn.timeout if isinstance(conn.timeout, int | float) else None
        deadline = current_deadline()
        try:
            addresses: list[CheckedAddress] = call_within(
                deadline, lambda: resolve_checked(host, port, self.policy, resolver=self.resolver)
            )
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
        except TimeoutError as exc:  # getaddrinfo has no timeout of its own: a slow DNS server is waited on
            raise AttemptTimeout(f"timed out after {_seconds(timeout)} resolving {host}") from exc
        error: OSError | None = None
        for family, sockaddr in addresses:
            try:
                left = time_left(deadline)
                sock = self.connect(family, sockaddr, _sooner(timeout, left), conn.source_address,
                                    conn.socket_options)  # fmt: skip
            except OSError as exc:  # try the next checked address, as create_connection does
                error = exc
                continue
            try:
                bound(sock, deadline)  # the TLS handshake that follows gets only what is left
            except TimeoutError as exc:
                sock.close()
                error = exc
                break
            return sock
        if error is None:  # unreachable: resolve_checked raises rather than return an empty list
            raise ConnectError(f"{host} resolves to no address")
        if isinstance(error, TimeoutError):
            raise AttemptTimeout(f"timed out after {_seconds(timeout)} connecting to {host}") from error
        raise ConnectError(_describe_os_error(error)) from error


def _sooner(timeout: float | None, left: float | None) -> float | None:
    if timeout is None:
        return left
    return timeout if left is None else min(timeout, left)


class _DeadlineResponse(http.client.HTTPResponse):
    """``http.client``'s response, reading through a file whose every read ends at the attempt's deadline:
    the 1xx answers, status line, headers and body all share one budget."""

    def __init__(
        self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None
    ) -> None:
        deadline = current_deadline()
        if deadline is not None:
            sock = cast(socket.socket, DeadlineSocket(sock, deadline))
        super().__init__(sock, debuglevel, method, url)


class _GuardedHTTPConnection(HTTPConnection):
    response_class = _DeadlineResponse

    def __init__(self, *args: Any, egress: _Egress, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._egress = egress

    def _new_conn(self) -> socket.socket:
        return self._egress.open(self)

    def send(self, data: Any) -> None:
        # One sendall per call; CPython bounds the whole sendall by the socket timeout set here.
        if self.sock is not None:
            bound(self.sock, current_deadline())
        super().send(data)


class _GuardedHTTPSConnection(HTTPSConnection):
    response_class = _DeadlineResponse

    def __init__(self, *args: Any, egress: _Egress, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._egress = egress

    def _new_conn(self) -> socket.socket:
        return self._egress.open(self)

    def send(self, data: Any) -> None:
        if self.sock is not None:
            bound(self.sock, current_deadline())
        super().send(data)


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedPoolManager(urllib3.PoolManager):
    def __init__(self, egress: _Egress, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }
        self._egress = egress

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        # Handed to each connection the pool creates. Not a pool-manager keyword: urllib3 builds its pool key
        # from those and rejects unknown ones.
        pool.conn_kw["egress"] = self._egress
        return pool


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose pools connect through the egress guard. ``send`` is inherited untouched, so the
    ``responses`` library (which patches ``HTTPAdapter.send``) intercepts it in tests."""

    def __init__(self, egress: _Egress, *, pool_connections: int, pool_maxsize: int) -> None:
        self._egress = egress  # before super().__init__, which calls init_poolmanager
        super().__init__(pool_connections=pool_connections, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _GuardedPoolManager(
            self._egress, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # A proxy would connect to the target itself, past the guard.
        raise EgressDenied("deliveries never go through a proxy")


@dataclass(frozen=True)
class _Exchange:
    status_code: int
    headers: dict[str, str]
    content: bytes
    too_large: bool


class HttpClient:
    """Makes delivery attempts: POST, no redirects, egress-guarded, pooled per endpoint. Close it when done.

    ``max_endpoints`` is how many per-origin pools are kept (least recently used ones are closed);
    ``ca_bundle`` replaces the system CAs (``REQUESTS_CA_BUNDLE`` is ignored: the environment is not trusted).
    ``resolver``, ``connect`` and ``clock`` are injected by tests.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        pool_per_endpoint: int = 10,
        max_endpoints: int = 256,
        ca_bundle: str | None = None,
        resolver: Resolver = socket.getaddrinfo,
        connect: Connector = connect_socket,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._clock = clock
        session = requests.Session()
        # Proxies, .netrc credentials and CA bundles from the environment would all bypass or change what the
        # guard and the webhook files decide.
        session.trust_env = False
        # Receivers' cookies would otherwise be replayed to them (and kept in memory forever).
        session.cookies.set_policy(_NoCookies())
        # identity: the excerpt is read raw, and a compressed body gains nothing when 4 KiB are kept.
        session.headers.clear()
        session.headers.update({"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"})
        if ca_bundle is not None:
            session.verify = ca_bundle
        adapter = _GuardedAdapter(
            _Egress(policy, resolver, connect), pool_connections=max_endpoints, pool_maxsize=pool_per_endpoint
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        self._adapter = adapter
        self._verify: bool | str = ca_bundle if ca_bundle is not None else True

    def close(self) -> None:
        """Close every pooled connection."""
        self._session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def send(self, request: OutboundRequest) -> AttemptRecord:
        """Make one attempt. Never raises for delivery problems: they become ``AttemptRecord.error``."""
        started_at = self._clock()
        start = time.monotonic()
        try:
            exchange = self._exchange(
                request.url,
                request.body,
                request.headers,
                request.timeout_seconds,
                request.basic_auth,
                EXCERPT_BYTES,
            )
        except DeliveryError as exc:
            return AttemptRecord(started_at, time.monotonic() - start, error=error_text(exc))
        return AttemptRecord(
            started_at,
            time.monotonic() - start,
            status_code=exchange.status_code,
            response_headers=exchange.headers,
            response_excerpt=exchange.content[:EXCERPT_BYTES].decode("utf-8", "replace"),
        )

    def post_json(self, url: str, payload: dict[str, Any], timeout_seconds: float) -> AttemptRecord:
        """POST ``payload`` as JSON (for callbacks); the same guard and error handling as ``send``."""
        return self.send(json_request(url, payload, timeout_seconds))

    def fetch_token(self, auth: TokenAuth, password: str, timeout_seconds: float) -> str:
        """dj-whisperer's token flow: POST the credentials form-encoded (its ``requests.post(data=...)``) to
        ``auth.url``, return ``token_key`` of the JSON answer. Raises DeliveryError (message without password
        or token)."""
        body = urlencode({auth.username_field: auth.username, auth.password_field: password}).encode("ascii")
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        where = f"token endpoint {auth.url}"
        try:
            exchange = self._exchange(
                auth.url, body, headers, timeout_seconds, None, TOKEN_RESPONSE_LIMIT_BYTES
            )
        except DeliveryError as exc:
            raise type(exc)(f"{where}: {error_text(exc)}") from exc
        if not 200 <= exchange.status_code <= 299:
            raise DeliveryError(f"{where} answered HTTP {exchange.status_code}")
        if exchange.too_large:
            raise DeliveryError(f"{where}: too many bytes (more than {TOKEN_RESPONSE_LIMIT_BYTES})")
        # The body is never quoted below: it holds the token.
        try:
            answer = json.loads(exchange.content)
        except (ValueError, RecursionError):  # RecursionError: a deeply nested answer
            raise DeliveryError(f"{where}: the answer is not JSON") from None
        token = answer.get(auth.token_key) if isinstance(answer, dict) else None
        if isinstance(token, int) and not isinstance(token, bool):
            token = str(token)
        if not isinstance(token, str) or not token:
            raise DeliveryError(f"{where}: the answer has no {auth.token_key!r} string")
        return token

    def _prepare(
        self, url: str, body: bytes, headers: dict[str, str], basic_auth: tuple[str, str] | None
    ) -> requests.PreparedRequest:
        """What ``Session.prepare_request`` builds for a POST with a bytes body, without the merging."""
        prepared = requests.PreparedRequest()
        prepared.method = "POST"
        prepared.url = _prepared_url(url)
        for name, value in headers.items():
            # What requests' prepare_headers checks; a resolved secret may carry a newline.
            if _UNSAFE.intersection(name) or _UNSAFE.intersection(value):
                raise requests.exceptions.InvalidHeader("invalid header")
        merged: requests.structures.CaseInsensitiveDict[str] = requests.structures.CaseInsensitiveDict()
        merged.update({k: v for k, v in self._session.headers.items() if isinstance(v, str)})
        merged.update(headers)
        merged["Content-Length"] = str(len(body))
        if basic_auth is not None:
            merged["Authorization"] = requests.auth._basic_auth_str(*basic_auth)
        prepared.headers = merged
        prepared.body = body
        prepared.hooks = {"response": []}
        return prepared

    def _exchange(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout_seconds: float,
        basic_auth: tuple[str, str] | None,
        limit: int,
    ) -> _Exchange:
        """POST and read at most ``limit`` bytes of the answer, all within ``timeout_seconds``; every failure
        raised as a DeliveryError."""
        with attempt_deadline(timeout_seconds):
            try:
                # The adapter directly, not Session.post: a delivery needs no cookies, hooks, redirects or
                # environment merging, and skipping them halves the client's CPU per attempt (profiled).
                response = self._adapter.send(
                    self._prepare(url, body, headers, basic_auth),
                    stream=True,
                    timeout=(timeout_seconds, timeout_seconds),
                    verify=self._verify,
                    cert=None,
                    proxies={},
                )
            except DeliveryError:
                raise
            except Exception as exc:
                raise _translate(exc, timeout_seconds) from exc
            try:
                content, too_large = _read_body(response.raw, limit)
            except Exception as exc:
                raise _translate(exc, timeout_seconds) from exc
            finally:
                response.close()  # returns the connection to the pool when the body was read to the end
        kept = {
            name: value for name in HEADERS_OF_INTEREST if (value := response.headers.get(name)) is not None
        }
        return _Exchange(response.status_code, kept, content, too_large)


def _read_body(raw: Any, limit: int) -> tuple[bytes, bool]:
    """Read up to ``limit`` bytes, then drain a small remainder so the connection can be reused.

    Returns the bytes and whether the body was longer than ``limit``. Every read ends at the attempt's
    deadline: a body whose first ``limit`` bytes (or end) do not arrive in time fails the attempt as a
    timeout; a remainder still arriving at the deadline is left unread and the connection is then closed
    rather than reused.
    """
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = raw.read1(limit - size, decode_content=True)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    drained = 0
    try:
        while drained <= DRAIN_LIMIT_BYTES:
            chunk = raw.read1(8192, decode_content=True)
            if not chunk:
                break
            drained += len(chunk)
    except Exception:  # the answer is complete: a remainder not read only costs the connection
        return b"".join(chunks), True
    return b"".join(chunks), drained > 0


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def error_text(exc: DeliveryError) -> str:
    """The text an attempt records for a failure: says which kind, e.g. ``egress denied: ...``."""
    return f"egress denied: {exc}" if isinstance(exc, EgressDenied) else str(exc)


def _seconds(value: float | None) -> str:
    return "no timeout" if value is None else f"{value:g}s"


def _translate(exc: Exception, timeout_seconds: float) -> DeliveryError:
    """The one place where foreign exceptions of an attempt become DeliveryErrors with a short message."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return AttemptTimeout(f"timed out after {timeout_seconds:g}s connecting")
    if isinstance(exc, requests.exceptions.Timeout | urllib3.exceptions.TimeoutError | TimeoutError):
        return AttemptTimeout(f"timed out: no complete answer within {timeout_seconds:g}s")
    if isinstance(exc, requests.exceptions.InvalidHeader):
        # requests quotes the offending value, which may be a secret.
        return DeliveryError("invalid header value (not shown)")
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return DeliveryError("invalid URL")
    if isinstance(exc, requests.exceptions.InvalidSchema):
        return DeliveryError("unsupported URL scheme (http and https only)")
    if isinstance(exc, requests.exceptions.SSLError | ssl.SSLError | urllib3.exceptions.SSLError):
        return ConnectError(f"TLS error: {_innermost(exc).removeprefix('connection failed: ')}")
    if isinstance(
        exc,
        requests.exceptions.ConnectionError | urllib3.exceptions.ProtocolError | http.client.HTTPException,
    ):
        return ConnectError(_innermost(exc))
    # requests' exceptions are OSErrors too: the specific ones above, the rest here, plain OSErrors last.
    if isinstance(exc, requests.RequestException | urllib3.exceptions.HTTPError):
        return DeliveryError(f"request failed ({type(exc).__name__})")
    if isinstance(exc, OSError):
        return ConnectError(_innermost(exc))
    if isinstance(exc, ValueError):
        # e.g. a header value that is not latin-1: the codec's message would quote part of it.
        return DeliveryError(f"invalid request ({type(exc).__name__})")
    raise exc  # a bug, not a delivery problem: let it surface


def _innermost(exc: BaseException) -> str:
    """A short description of the root cause buried in requests' and urllib3's wrappers."""
    seen: set[int] = set()
    current: BaseException | None = exc
    last: BaseException = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        last = current
        reason = getattr(current, "reason", None)  # MaxRetryError
        if isinstance(reason, BaseException):
            current = reason
            continue
        nested = next((a for a in current.args if isinstance(a, BaseException)), None)
        current = nested if nested is not None else (current.__cause__ or current.__context__)
    if isinstance(last, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {last.verify_message}"
    if isinstance(last, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(last, OSError) and not isinstance(last, ssl.SSLError | requests.RequestException):
        return _describe_os_error(last)
    return f"connection failed: {str(last) or type(last).__name__}"


def _describe_os_error(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(error, TimeoutError):
        return "timed out"
    return (error.strerror or str(error) or type(error).__name__).lower()


_UNSAFE = frozenset("\r\n\0")


@lru_cache(maxsize=4096)
def _prepared_url(url: str) -> str:
    """requests' URL normalisation (IDNA, quoting), once per target URL. Raises for an invalid URL."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    assert prepared.url is not None
    return prepared.url
