"""The HTTP client. Unit tests use ``responses`` (no sockets) with a resolver and connector that fail the test
if reached; tests that need a real socket use a server on 127.0.0.1 and fake resolvers answering loopback
addresses only. Nothing here can send a packet beyond loopback."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses

from dispatcher.egress import EgressPolicy
from dispatcher.errors import DeliveryError
from dispatcher.http import EXCERPT_BYTES, HttpClient, connect_socket
from dispatcher.outbound import OutboundRequest
from reconciler.model import SecretRef, TokenAuth

LOOPBACK = EgressPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),))
URL = "https://hooks.example.test/in"


# -- guards -----------------------------------------------------------------------------------------------


def forbidden_resolver(host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
    raise AssertionError(f"resolver called for {host}:{port}: the test must not reach the network layer")


def forbidden_connect(*args: Any) -> socket.socket:
    raise AssertionError(f"connect called with {args!r}: the egress guard should have refused first")


def mocked_client(**kwargs: Any) -> HttpClient:
    """A client for ``responses`` tests: if interception ever failed, it could neither resolve nor connect."""
    return HttpClient(EgressPolicy(), resolver=forbidden_resolver, connect=forbidden_connect, **kwargs)


def loopback_resolver(host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
    """Answers 127.0.0.1 for every name: lets tests use a hostname while only ever touching loopback."""
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


class RecordingConnect:
    """The real connector, recording each (family, sockaddr) it is asked to connect to."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, tuple[Any, ...]]] = []

    def __call__(self, family: int, sockaddr: tuple[Any, ...], *rest: Any) -> socket.socket:
        assert ipaddress.ip_address(sockaddr[0]).is_loopback, "tests connect to loopback only"
        self.calls.append((family, sockaddr))
        return connect_socket(family, sockaddr, *rest)


def sent_body(index: int) -> bytes:
    """The body of the index-th request ``responses`` intercepted."""
    body = responses.calls[index].request.body
    assert isinstance(body, bytes)
    return body


def request(url: str = URL, **kwargs: Any) -> OutboundRequest:
    fields: dict[str, Any] = {"body": b'{"a":1}', "headers": {"Content-Type": "application/json"}}
    fields.update(kwargs)
    fields.setdefault("timeout_seconds", 10.0)
    return OutboundRequest(url=url, **fields)


# -- a real server on loopback ----------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


Respond = Callable[[BaseHTTPRequestHandler], None]


def respond_ok(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "2")
    handler.end_headers()
    handler.wfile.write(b"ok")


@dataclass
class LocalServer:
    httpd: ThreadingHTTPServer
    requests: list[Seen] = field(default_factory=list)
    respond: Respond = respond_ok
    sni: list[str | None] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str = "/hook", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def start_server(tls: ssl.SSLContext | None = None) -> LocalServer:
    holder: list[LocalServer] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            server = holder[0]
            server.requests.append(
                Seen("POST", self.path, dict(self.headers.items()), body, self.client_address[1])
            )
            # The client may give up first (the timeout tests): expected, not worth a traceback.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                server.respond(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server = LocalServer(httpd)
    holder.append(server)
    if tls is not None:

        def remember_sni(sock: Any, name: str | None, ctx: Any) -> None:
            server.sni.append(name)

        tls.sni_callback = remember_sni
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def stop_server(server: LocalServer) -> None:
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    s = start_server()
    yield s
    stop_server(s)


@pytest.fixture
def client() -> Iterator[HttpClient]:
    with HttpClient(LOOPBACK) as c:
        yield c


# -- responses: HTTP logic without sockets ----------------------------------------------------------------


@responses.activate
def test_send_posts_the_body_and_headers_as_given() -> None:
    """The request is a POST with the exact body and every given header, plus basic auth when set."""
    responses.add(responses.POST, URL, status=204)
    headers = {"Content-Type": "application/json", "X-Whisperer-Event": "package.created", "X-Source": "oms"}
    with mocked_client() as c:
        record = c.send(request(body=b'{"id": 73}', headers=headers, basic_auth=("oms", "pw")))
    assert record.status_code == 204 and record.error is None
    sent = responses.calls[0].request
    assert sent.method == "POST"
    assert sent.body == b'{"id": 73}'
    for name, value in headers.items():
        assert sent.headers[name] == value
    assert sent.headers["Authorization"] == "Basic b21zOnB3"  # base64("oms:pw")


@responses.activate
def test_redirects_are_returned_not_followed() -> None:
    """A 302 is recorded as the attempt's status; the Location is kept and never requested."""
    responses.add(responses.POST, URL, status=302, headers={"Location": "https://elsewhere.example.test/"})
    responses.add(responses.POST, "https://elsewhere.example.test/", status=200)
    with mocked_client() as c:
        record = c.send(request())
    assert record.status_code == 302
    assert record.response_headers["Location"] == "https://elsewhere.example.test/"
    assert len(responses.calls) == 1


@responses.activate
def test_excerpt_is_truncated_to_4_kib() -> None:
    """Only the first 4096 bytes of the response body are kept."""
    responses.add(responses.POST, URL, status=500, body=b"x" * 5000 + b"tail")
    with mocked_client() as c:
        record = c.send(request())
    assert EXCERPT_BYTES == 4096
    assert record.response_excerpt == "x" * 4096


@responses.activate
def test_excerpt_decodes_invalid_utf8_leniently() -> None:
    """A body that is not UTF-8 still yields a text excerpt (with replacement characters)."""
    responses.add(responses.POST, URL, status=400, body=b"bad \xff byte")
    with mocked_client() as c:
        assert c.send(request()).response_excerpt == "bad \ufffd byte"


@responses.activate
def test_only_headers_of_interest_are_kept() -> None:
    """Retry-After, Content-Type, Server, X-Request-Id and Date are kept; cookies and the rest dropped."""
    responses.add(
        responses.POST,
        URL,
        status=503,
        body="busy",
        headers={
            "Retry-After": "120",
            "Server": "nginx",
            "X-Request-Id": "abc",
            "Date": "Sun, 01 Mar 2026 12:00:00 GMT",
            "Set-Cookie": "session=secret",
            "X-Internal-Token": "t0k3n",
        },
        content_type="text/plain",
    )
    with mocked_client() as c:
        record = c.send(request())
    assert record.response_headers["Retry-After"] == "120"
    assert record.response_headers["Server"] == "nginx"
    assert record.response_headers["X-Request-Id"] == "abc"
    assert record.response_headers["Date"] == "Sun, 01 Mar 2026 12:00:00 GMT"
    assert record.response_headers["Content-Type"].startswith("text/plain")
    assert "Set-Cookie" not in record.response_headers
    assert "X-Internal-Token" not in record.response_headers


@pytest.mark.parametrize(
    ("exception", "expected"),
    [
        (requests.exceptions.ReadTimeout("read timed out"), "timed out: no complete answer within 10s"),
        (requests.exceptions.ConnectTimeout("connect timed out"), "timed out after 10s connecting"),
        (requests.exceptions.ConnectionError(ConnectionRefusedError(111, "refused")), "connection refused"),
        (requests.exceptions.ConnectionError(ConnectionResetError(104, "reset")), "connection reset by peer"),
        (requests.exceptions.SSLError("certificate verify failed"), "TLS error: certificate verify failed"),
        (requests.exceptions.ChunkedEncodingError("broken"), "request failed (ChunkedEncodingError)"),
    ],
)
def test_transport_failures_become_attempt_errors(exception: Exception, expected: str) -> None:
    """Timeouts, refused and reset connections and TLS failures are recorded as errors, never raised."""
    with responses.RequestsMock() as rsps, mocked_client(clock=lambda: 1234.5) as c:
        rsps.add(responses.POST, URL, body=exception)
        record = c.send(request())
    assert record.status_code is None
    assert record.error == expected
    assert record.started_at == 1234.5
    assert record.duration_seconds >= 0


def test_a_header_value_that_is_a_secret_never_appears_in_the_error() -> None:
    """An invalid header value (here a secret with a newline) is reported without the value."""
    secret = "s3cret\ninjected: yes"
    with responses.RequestsMock(assert_all_requests_are_fired=False), mocked_client() as c:
        record = c.send(request(headers={"Authorization": secret}))
    assert record.error is not None and "invalid header" in record.error
    assert "s3cret" not in record.error


@pytest.mark.parametrize("url", ["ftp://hooks.example.test/in", "hooks.example.test/in", "http://"])
def test_bad_urls_become_errors(url: str) -> None:
    """An unusable URL is an attempt error, not an exception."""
    with responses.RequestsMock(assert_all_requests_are_fired=False), mocked_client() as c:
        record = c.send(request(url=url))
    assert record.status_code is None and record.error


@responses.activate
def test_post_json_sends_the_payload_as_json() -> None:
    """post_json (callbacks) POSTs the payload as application/json."""
    responses.add(responses.POST, "https://oms.example.test/outcomes", status=200)
    with mocked_client() as c:
        record = c.post_json("https://oms.example.test/outcomes", {"outcome": "dead", "attempts": 8}, 5.0)
    assert record.status_code == 200
    sent = responses.calls[0].request
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent_body(0)) == {"outcome": "dead", "attempts": 8}


TOKEN_AUTH = TokenAuth(url="https://auth.example.test/token", username="oms", password=SecretRef("env", "PW"))


@responses.activate
def test_fetch_token_posts_credentials_and_reads_the_token() -> None:
    """The token flow POSTs username and password form-encoded (as dj-whisperer does), returns token_key."""
    responses.add(responses.POST, TOKEN_AUTH.url, json={"key": "tok-123"})
    with mocked_client() as c:
        assert c.fetch_token(TOKEN_AUTH, "pw-secret", 5.0) == "tok-123"
    assert parse_qs(sent_body(0).decode(), strict_parsing=True) == {
        "username": ["oms"],
        "password": ["pw-secret"],
    }
    assert responses.calls[0].request.headers["Content-Type"] == "application/x-www-form-urlencoded"


@responses.activate
def test_fetch_token_uses_the_configured_field_names() -> None:
    """username_field, password_field and token_key rename the form fields and the answer's field."""
    auth = TokenAuth(
        url="https://auth.example.test/login",
        username="oms",
        password=SecretRef("env", "PW"),
        username_field="email",
        password_field="pass",
        token_key="access",
    )
    responses.add(responses.POST, auth.url, json={"access": "abc", "key": "wrong"})
    with mocked_client() as c:
        assert c.fetch_token(auth, "pw", 5.0) == "abc"
    assert parse_qs(sent_body(0).decode()) == {"email": ["oms"], "pass": ["pw"]}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"status": 401, "json": {"detail": "bad password pw-secret"}}, "answered HTTP 401"),
        ({"status": 200, "body": "not json tok-999"}, "not JSON"),
        ({"status": 200, "json": {"token": "tok-999"}}, "no 'key'"),
        ({"status": 200, "json": ["tok-999"]}, "no 'key'"),
        ({"status": 200, "json": {"key": "tok-999", "pad": "x" * 70000}}, "too many bytes"),
        ({"body": requests.exceptions.ReadTimeout("slow")}, "timed out: no complete answer within 5s"),
    ],
)
def test_fetch_token_failures_never_reveal_password_or_token(kwargs: dict[str, Any], fragment: str) -> None:
    """Every token-flow failure raises DeliveryError whose message has neither the password nor a token."""
    with responses.RequestsMock() as rsps, mocked_client() as c:
        rsps.add(responses.POST, TOKEN_AUTH.url, **kwargs)
        with pytest.raises(DeliveryError) as info:
            c.fetch_token(TOKEN_AUTH, "pw-secret", 5.0)
    message = str(info.value)
    assert fragment in message
    assert TOKEN_AUTH.url in message
    assert "pw-secret" not in message and "tok-999" not in message


def test_fetch_token_goes_through_the_egress_guard() -> None:
    """The token URL is subject to the egress guard like any delivery."""

    def metadata(host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    with (
        HttpClient(EgressPolicy(), resolver=metadata, connect=forbidden_connect) as c,
        pytest.raises(DeliveryError, match=r"egress denied: .*169\.254\.169\.254 is link-local"),
    ):
        c.fetch_token(TOKEN_AUTH, "pw-secret", 5.0)


# -- the egress guard in the connection path --------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.1", "2130706433"])
def test_loopback_server_is_never_reached_without_allow_cidr(server: LocalServer, host: str) -> None:
    """Without --allow-cidr a real send to a loopback server is refused and the server sees nothing."""
    with HttpClient(EgressPolicy()) as c:
        record = c.send(request(server.url(host=host)))
    assert record.status_code is None
    assert record.error is not None and record.error.startswith("egress denied: ")
    assert "loopback" in record.error
    assert server.requests == []


def test_loopback_server_is_reached_with_allow_cidr(server: LocalServer, client: HttpClient) -> None:
    """With 127.0.0.0/8 allowed the same send reaches the server and records its answer."""
    record = client.send(request(server.url(), body=b'{"id":1}', headers={"X-Whisperer-Event": "a.b"}))
    assert record.error is None
    assert record.status_code == 200
    assert record.response_excerpt == "ok"
    assert [r.body for r in server.requests] == [b'{"id":1}']
    assert server.requests[0].headers["X-Whisperer-Event"] == "a.b"


@pytest.mark.parametrize(
    ("answers", "fragment"),
    [
        (("169.254.169.254",), "169.254.169.254 is link-local (cloud metadata)"),
        (("10.0.0.1",), "10.0.0.1 is a private address"),
        (("100.64.0.1",), "CGNAT"),
        (("93.184.216.34", "192.168.0.10"), "192.168.0.10 is a private address"),
        (("fd00::1",), "unique local"),
        (("::ffff:10.0.0.1",), "IPv4-mapped 10.0.0.1"),
    ],
)
def test_refused_resolutions_never_connect(answers: tuple[str, ...], fragment: str) -> None:
    """When the name resolves to a refused address (even among public ones) no connection is attempted."""

    def fake(host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for ip in answers:
            family_ = socket.AF_INET6 if ":" in ip else socket.AF_INET
            out.append((family_, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out

    with HttpClient(EgressPolicy(), resolver=fake, connect=forbidden_connect) as c:
        record = c.send(request("http://hooks.example.test/in"))
    assert record.error is not None
    assert record.error.startswith("egress denied: hooks.example.test resolves to ")
    assert fragment in record.error


def test_connection_goes_to_the_checked_address_with_the_original_host(server: LocalServer) -> None:
    """The socket connects to the address the guard checked; the Host header keeps the URL's hostname."""
    connect = RecordingConnect()
    with HttpClient(LOOPBACK, resolver=loopback_resolver, connect=connect) as c:
        record = c.send(request(server.url(host="hooks.example.test")))
    assert record.status_code == 200
    assert connect.calls == [(socket.AF_INET, ("127.0.0.1", server.port))]
    assert server.requests[0].headers["Host"] == f"hooks.example.test:{server.port}"


def test_next_checked_address_is_tried_when_one_refuses(server: LocalServer) -> None:
    """When the first checked address refuses the connection, the next one is tried."""

    def two(host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
        with socket.socket() as probe:  # a loopback port with nothing listening
            probe.bind(("127.0.0.1", 0))
            dead = probe.getsockname()
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", dead),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    connect = RecordingConnect()
    with HttpClient(LOOPBACK, resolver=two, connect=connect) as c:
        record = c.send(request(server.url(host="hooks.example.test")))
    assert record.status_code == 200
    assert len(connect.calls) == 2 and connect.calls[1][1] == ("127.0.0.1", server.port)


def test_connect_timeout_is_an_attempt_error() -> None:
    """A connector that times out gives 'timed out after ... connecting to <host>'."""

    def stuck(*args: Any) -> socket.socket:
        raise TimeoutError("timed out")

    with HttpClient(LOOPBACK, resolver=loopback_resolver, connect=stuck) as c:
        record = c.send(request("http://hooks.example.test/", timeout_seconds=3))
    assert record.error == "timed out after 3s connecting to hooks.example.test"


def test_resolution_failure_is_an_attempt_error() -> None:
    """A name that does not resolve becomes 'cannot resolve ...'."""

    def nxdomain(host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with HttpClient(EgressPolicy(), resolver=nxdomain, connect=forbidden_connect) as c:
        record = c.send(request("http://nowhere.example.test/"))
    assert record.error == "cannot resolve nowhere.example.test: Name or service not known"


def test_connections_are_reused_per_endpoint(server: LocalServer, client: HttpClient) -> None:
    """Two attempts to one endpoint share one kept-alive connection."""
    assert client.send(request(server.url())).status_code == 200
    assert client.send(request(server.url())).status_code == 200
    ports = {r.client_port for r in server.requests}
    assert len(server.requests) == 2 and len(ports) == 1


def test_chunked_response_excerpt_is_truncated(server: LocalServer, client: HttpClient) -> None:
    """A chunked body longer than 4 KiB is cut to 4096 bytes."""

    def chunked(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(500)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(10):
            piece = b"y" * 1000
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")

    server.respond = chunked
    record = client.send(request(server.url()))
    assert record.status_code == 500
    assert record.response_excerpt == "y" * 4096
    assert client.send(request(server.url())).status_code == 500  # the connection is still usable


def test_real_redirect_is_not_followed(server: LocalServer, client: HttpClient) -> None:
    """A real 307 answer is the attempt's status; the server sees a single request."""

    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(307)
        handler.send_header("Location", "/elsewhere")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server.respond = redirect
    record = client.send(request(server.url()))
    assert record.status_code == 307
    assert record.response_headers["Location"] == "/elsewhere"
    assert [r.path for r in server.requests] == ["/hook"]


def test_connection_refused_is_an_attempt_error(client: HttpClient) -> None:
    """Nothing listening on an allowed loopback port gives 'connection refused'."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    record = client.send(request(f"http://127.0.0.1:{port}/"))
    assert record.error == "connection refused"


def test_slow_server_times_out(server: LocalServer, client: HttpClient) -> None:
    """A server that does not answer within timeout_seconds gives 'timed out after ...'."""
    release = threading.Event()

    def slow(handler: BaseHTTPRequestHandler) -> None:
        release.wait(5)
        respond_ok(handler)

    server.respond = slow
    started = time.monotonic()
    record = client.send(request(server.url(), timeout_seconds=0.2))
    release.set()
    assert record.error == "timed out: no complete answer within 0.2s"
    assert time.monotonic() - started < 3


def test_proxy_environment_is_ignored(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP(S)_PROXY in the environment never diverts a delivery (it would bypass the guard)."""
    proxy = start_server()
    try:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with HttpClient(LOOPBACK) as c:
            assert c.send(request(server.url())).status_code == 200
        assert len(server.requests) == 1 and proxy.requests == []
    finally:
        stop_server(proxy)


def test_cookies_are_not_replayed(server: LocalServer, client: HttpClient) -> None:
    """A Set-Cookie from a receiver is not sent back on the next attempt."""

    def with_cookie(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Set-Cookie", "session=abc; Path=/")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server.respond = with_cookie
    client.send(request(server.url()))
    client.send(request(server.url()))
    assert "Cookie" not in server.requests[1].headers


# -- TLS: SNI and certificate checks stay on the hostname -------------------------------------------------


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=DNS:{name}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[LocalServer, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = make_cert(tmp_path, "hooks.example.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    s = start_server(tls=context)
    yield s, cert
    stop_server(s)


def test_tls_uses_the_hostname_for_sni_and_verification(tls_server: tuple[LocalServer, Path]) -> None:
    """Connecting to the checked IP, TLS still sends SNI for and verifies the certificate of the hostname."""
    server, cert = tls_server
    with HttpClient(LOOPBACK, resolver=loopback_resolver, ca_bundle=str(cert)) as c:
        record = c.send(request(server.url(host="hooks.example.test", scheme="https")))
    assert record.error is None and record.status_code == 200
    assert server.sni == ["hooks.example.test"]
    assert server.requests[0].headers["Host"] == f"hooks.example.test:{server.port}"


def test_tls_certificate_for_another_name_is_refused(tls_server: tuple[LocalServer, Path]) -> None:
    """A certificate that does not match the URL's hostname fails the attempt with a TLS error."""
    server, cert = tls_server
    with HttpClient(LOOPBACK, resolver=loopback_resolver, ca_bundle=str(cert)) as c:
        record = c.send(request(server.url(host="other.example.test", scheme="https")))
    assert record.status_code is None
    assert record.error is not None and record.error.startswith("TLS error: certificate verify failed")
    assert server.requests == []
