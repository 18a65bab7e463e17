"""The egress guard, judged at the address level. No test here opens a connection: fake resolvers return
addresses, and the only real resolutions are of loopback literals and ``localhost``."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from dispatcher.egress import EgressPolicy, parse_cidr, resolve_checked
from dispatcher.errors import ConnectError, EgressDenied

DEFAULT = EgressPolicy()


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("169.254.169.254", "169.254.169.254 is link-local (cloud metadata)"),
        ("10.0.0.1", "10.0.0.1 is a private address"),
        ("0.0.0.0", "0.0.0.0 is unspecified"),
        ("100.64.0.1", "100.64.0.1 is shared address space (CGNAT)"),
    ],
)
def test_refusal_messages_name_the_address_and_reason(ip: str, message: str) -> None:
    """The refusal reason is a sentence naming the address and why it is refused."""
    assert DEFAULT.refusal(ip) == message


@pytest.mark.parametrize(
    ("ip", "fragment"),
    [
        ("127.255.255.254", "loopback"),
        ("0.1.2.3", "'this network'"),
        ("172.16.5.4", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.0.1", "link-local"),
        ("100.127.255.255", "CGNAT"),
        ("192.0.0.8", "IETF protocol assignments"),
        ("192.0.2.10", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.99", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("224.0.0.251", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fe80::1%1", "link-local"),
        ("fc00::1", "unique local"),
        ("fd00:ec2::254", "unique local"),  # AWS IPv6 instance metadata
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("100::1", "discard-only"),
        ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1, which is a loopback address"),
        ("::ffff:169.254.169.254", "IPv4-mapped 169.254.169.254, which is link-local"),
        ("::ffff:10.1.2.3", "IPv4-mapped 10.1.2.3, which is a private address"),
        ("::127.0.0.1", "IPv4-compatible 127.0.0.1"),
        ("::10.0.0.1", "IPv4-compatible 10.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "NAT64 169.254.169.254"),
        ("64:ff9b::7f00:1", "NAT64 127.0.0.1"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("2002:7f00:1::1", "6to4 127.0.0.1"),
        ("2002:a00:1::1", "6to4 10.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo address embedding 10.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("4000::1", "outside the global unicast range"),
    ],
)
def test_non_global_addresses_are_refused(ip: str, fragment: str) -> None:
    """Loopback, private, link-local, CGNAT, multicast, reserved and embedded forms of them are refused."""
    reason = DEFAULT.refusal(ip)
    assert reason is not None
    assert reason.startswith(ip.split("%")[0]) or reason.startswith(ip)
    assert fragment in reason


@pytest.mark.parametrize(
    "ip",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "172.32.0.1",  # just outside 172.16.0.0/12
        "100.128.0.1",  # just outside 100.64.0.0/10
        "2606:4700:4700::1111",
        "2a00:1450:4001:82a::200e",
        "::ffff:8.8.8.8",  # mapped public
        "2002:808:808::1",  # 6to4 of 8.8.8.8
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    ],
)
def test_global_unicast_addresses_are_allowed(ip: str) -> None:
    """Public addresses (and IPv6 forms embedding a public IPv4 address) pass."""
    assert DEFAULT.refusal(ip) is None


def test_allowed_networks_override_the_refusal() -> None:
    """An --allow-cidr network admits addresses inside it, and only those."""
    policy = EgressPolicy(allowed=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")))
    assert policy.refusal("10.20.30.40") is None
    assert policy.refusal("fd12::1") is None
    assert policy.refusal("192.168.1.1") == "192.168.1.1 is a private address"
    assert policy.refusal("127.0.0.1") is not None


def test_allowed_ipv4_network_covers_its_mapped_form() -> None:
    """Allowing 127.0.0.0/8 also allows ::ffff:127.0.0.1, which is the same destination."""
    policy = EgressPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),))
    assert policy.refusal("::ffff:127.0.0.1") is None
    assert policy.refusal("::1") is not None  # the IPv6 loopback is a different network


def test_refusal_of_something_that_is_not_an_address() -> None:
    """A string that is not an IP address is refused with a message, not an exception."""
    assert DEFAULT.refusal("example.com") == "'example.com' is not an IP address"


class FakeResolver:
    """Returns fixed getaddrinfo-shaped answers and records what it was asked."""

    def __init__(self, *ips: str) -> None:
        self.ips = ips
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
        self.calls.append((host, port, family, type))
        answers: list[tuple[Any, ...]] = []
        for ip in self.ips:
            if ":" in ip:
                answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return answers


def test_resolve_checked_returns_every_checked_address() -> None:
    """Public answers are returned as (family, sockaddr), duplicates removed, in resolver order."""
    resolver = FakeResolver("93.184.216.34", "2606:2800:220:1::1", "93.184.216.34")
    addresses = resolve_checked("hooks.example.test", 443, DEFAULT, resolver=resolver)
    assert addresses == [
        (socket.AF_INET, ("93.184.216.34", 443)),
        (socket.AF_INET6, ("2606:2800:220:1::1", 443, 0, 0)),
    ]
    assert resolver.calls == [("hooks.example.test", 443, socket.AF_UNSPEC, socket.SOCK_STREAM)]


@pytest.mark.parametrize(
    ("answers", "fragment"),
    [
        (("10.0.0.1",), "hooks.example.test resolves to 10.0.0.1; 10.0.0.1 is a private address"),
        (("169.254.169.254",), "169.254.169.254 is link-local (cloud metadata)"),
        (("93.184.216.34", "127.0.0.1"), "127.0.0.1 is a loopback address"),
        (("2606:2800:220:1::1", "fd00::1"), "fd00::1 is a unique local address"),
        (("::ffff:192.168.0.1",), "IPv4-mapped 192.168.0.1"),
    ],
)
def test_resolve_checked_refuses_the_target_if_any_address_is_refused(
    answers: tuple[str, ...], fragment: str
) -> None:
    """One refused answer refuses the whole host, naming host and reason (DNS-rebinding safe)."""
    with pytest.raises(EgressDenied) as info:
        resolve_checked("hooks.example.test", 443, DEFAULT, resolver=FakeResolver(*answers))
    assert fragment in str(info.value)
    assert "hooks.example.test" in str(info.value)
    assert "--allow-cidr" in str(info.value)


def test_resolve_checked_strips_ipv6_brackets() -> None:
    """A bracketed IPv6 literal from a URL is resolved without its brackets."""
    resolver = FakeResolver("2606:2800:220:1::1")
    resolve_checked("[2606:2800:220:1::1]", 80, DEFAULT, resolver=resolver)
    assert resolver.calls[0][0] == "2606:2800:220:1::1"


def test_resolve_checked_with_no_answer_is_a_connect_error() -> None:
    """A name that resolves to nothing is a connection problem, not an egress refusal."""
    with pytest.raises(ConnectError, match="no address"):
        resolve_checked("hooks.example.test", 80, DEFAULT, resolver=FakeResolver())


def test_resolve_checked_lets_resolver_errors_through() -> None:
    """socket.gaierror propagates, for the HTTP layer to translate."""

    def failing(host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(socket.gaierror):
        resolve_checked("nowhere.example.test", 80, DEFAULT, resolver=failing)


def test_resolve_checked_refuses_unknown_address_families() -> None:
    """An answer that is neither IPv4 nor IPv6 is refused."""

    def odd(host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
        return [(socket.AF_UNIX, socket.SOCK_STREAM, 0, "", ("/tmp/x",))]

    with pytest.raises(EgressDenied, match="unsupported family"):
        resolve_checked("hooks.example.test", 80, DEFAULT, resolver=odd)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0", "127.1", "2130706433", "0x7f000001"])
def test_real_resolver_forms_of_loopback_are_refused(host: str) -> None:
    """Odd spellings of loopback are judged by what the OS resolver makes of them, and refused."""
    with pytest.raises(EgressDenied) as info:
        resolve_checked(host, 80, DEFAULT)
    message = str(info.value)
    assert "loopback" in message or "unspecified" in message
    assert host in message


@pytest.mark.parametrize("host", ["127.1", "2130706433"])
def test_odd_ipv4_forms_resolve_to_127_0_0_1_when_allowed(host: str) -> None:
    """With 127.0.0.0/8 allowed, the odd forms come back as the address the OS connects to: 127.0.0.1."""
    policy = EgressPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),))
    assert resolve_checked(host, 8080, policy) == [(socket.AF_INET, ("127.0.0.1", 8080))]


def _no_resolver(host: str, port: int, family: int, type: int) -> list[tuple[Any, ...]]:
    raise AssertionError(f"the resolver was asked about {host!r}")


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("127.1", "127.1 is the address 127.0.0.1; 127.0.0.1 is a loopback address"),
        ("2130706433", "127.0.0.1 is a loopback address"),
        ("0x7f000001", "127.0.0.1 is a loopback address"),
        ("0177.0.0.1", "127.0.0.1 is a loopback address"),
        ("127.0.1", "127.0.0.1 is a loopback address"),
        ("0xa9fea9fe", "169.254.169.254 is link-local (cloud metadata)"),
        ("012.1", "10.0.0.1 is a private address"),
        ("[::ffff:169.254.169.254]", "IPv4-mapped 169.254.169.254"),
        ("[fe80::1%25eth0]", "link-local"),
    ],
)
def test_refused_literals_in_any_spelling_are_refused_before_resolving(host: str, fragment: str) -> None:
    """A literal the guard refuses, however spelled, is refused without asking the resolver at all."""
    with pytest.raises(EgressDenied) as info:
        resolve_checked(host, 80, DEFAULT, resolver=_no_resolver)
    assert fragment in str(info.value)
    assert "--allow-cidr" in str(info.value)


def test_the_guard_and_the_private_address_rule_agree_on_literals() -> None:
    """Every spelling the guard refuses without resolving, reconcile's private-address rule warns for, and
    the public spellings pass both."""
    from reconciler.addresses import parse_ip_literal
    from reconciler.rules import _is_private_host

    for host in (
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.0.1",
        "0xa9fea9fe",
        "::ffff:10.0.0.1",
    ):
        with pytest.raises(EgressDenied):
            resolve_checked(host, 80, DEFAULT, resolver=_no_resolver)
        assert _is_private_host(host), host
    for host in ("8.8.8.8", "0x08080808", "134744072"):
        answer = FakeResolver(str(parse_ip_literal(host)))
        assert resolve_checked(host, 80, DEFAULT, resolver=answer) == [(socket.AF_INET, ("8.8.8.8", 80))]
        assert not _is_private_host(host), host


def test_real_resolver_refuses_ipv6_loopback() -> None:
    """::1 is refused through the real resolver as well."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python")
    with pytest.raises(EgressDenied, match="::1 is a loopback address"):
        resolve_checked("::1", 80, DEFAULT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.0/8", "127.0.0.0/8"),
        (" 10.0.0.0/8 ", "10.0.0.0/8"),
        ("192.168.1.7", "192.168.1.7/32"),
        ("fd00::/8", "fd00::/8"),
        ("::1", "::1/128"),
    ],
)
def test_parse_cidr_accepts_networks_and_single_addresses(text: str, expected: str) -> None:
    """--allow-cidr takes a network or a single address."""
    assert str(parse_cidr(text)) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("10.1.2.3/8", "did you mean 10.0.0.0/8?"),
        ("banana", "'banana'"),
        ("10.0.0.0/33", "'10.0.0.0/33'"),
        ("", "''"),
    ],
)
def test_parse_cidr_rejects_garbage_naming_the_value(text: str, fragment: str) -> None:
    """A value that is not a clean network raises ValueError naming it."""
    with pytest.raises(ValueError) as info:
        parse_cidr(text)
    assert fragment in str(info.value)
