"""Address literals read as the OS resolver reads them, and classified as the egress guard judges them."""

from __future__ import annotations

import ipaddress
import random
import socket

import pytest

from reconciler.addresses import parse_ip_literal, refusal


@pytest.mark.parametrize(
    ("literal", "meant"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x000000007f.0.0.01", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("169.254.43518", "169.254.169.254"),
        ("4294967295", "255.255.255.255"),
    ],
)
def test_every_inet_aton_spelling_of_an_ipv4_address_is_read(literal: str, meant: str) -> None:
    """Decimal, octal and hex parts, and one to four of them, mean what inet_aton makes of them."""
    assert parse_ip_literal(literal) == ipaddress.IPv4Address(meant)
    assert socket.inet_aton(literal) == ipaddress.IPv4Address(meant).packed  # the C library agrees


@pytest.mark.parametrize(
    "text",
    [
        "4294967296",
        "256.1.1.1",
        "1.16777216",
        "08.1",
        "0x",
        "0x.1",
        "1..2",
        "1.2.3.4.5",
        "",
        "a.b",
        "1.2.3.4 ",
    ],
)
def test_what_inet_aton_refuses_is_not_an_address(text: str) -> None:
    """Out-of-range parts, bad octal, empty parts and trailing text are names, not addresses."""
    assert parse_ip_literal(text) is None


def test_the_ipv4_parser_agrees_with_the_c_library_on_random_input() -> None:
    """On many random strings of digits, dots and x, the parser and inet_aton agree exactly."""
    rng = random.Random(1)
    for _ in range(20_000):
        text = "".join(rng.choice("0123456789xXabf..") for _ in range(rng.randint(1, 14)))
        try:
            expected: ipaddress.IPv4Address | None = ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            expected = None
        assert parse_ip_literal(text) == expected, text


def test_huge_parts_are_refused_without_converting_them() -> None:
    """A part with thousands of digits is not an address (and is not converted to a huge integer)."""
    assert parse_ip_literal("1" + "0" * 5000) is None
    assert parse_ip_literal("0" * 5000 + "1") == ipaddress.IPv4Address("0.0.0.1")


@pytest.mark.parametrize(
    ("literal", "meant"),
    [
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("[fe80::1%25eth0]", "fe80::1%25eth0"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ],
)
def test_ipv6_literals_with_brackets_and_zone_ids_are_read(literal: str, meant: str) -> None:
    """IPv6 in brackets, with a zone id, or with a dotted IPv4 tail is an address."""
    assert parse_ip_literal(literal) == ipaddress.IPv6Address(meant)


def test_names_are_not_addresses() -> None:
    """Host names, even ones made of hex digits, are left to the resolver."""
    for name in ("example.com", "deadbeef", "0xdeadbeef.example.com", "localhost", "::g"):
        assert parse_ip_literal(name) is None


@pytest.mark.parametrize(
    ("literal", "reason"),
    [
        ("127.1", "a loopback address"),
        ("0xa9fea9fe", "link-local (cloud metadata)"),
        ("012.0.0.1", "a private address"),
        ("100.64.1", "shared address space (CGNAT)"),
        ("[::ffff:10.0.0.1]", "IPv4-mapped 10.0.0.1, which is a private address"),
        ("::ffff:7f00:1", "IPv4-mapped 127.0.0.1, which is a loopback address"),
        ("64:ff9b::a9fe:a9fe", "NAT64 169.254.169.254, which is link-local (cloud metadata)"),
        ("2002:7f00:1::", "6to4 127.0.0.1, which is a loopback address"),
        ("fe80::1%eth0", "link-local"),
        ("fd00::1", "a unique local address (ULA, private)"),
        ("::", "unspecified"),
    ],
)
def test_non_public_addresses_are_refused_with_a_reason(literal: str, reason: str) -> None:
    """Loopback, private, link-local and embedded forms of them are refused, each saying why."""
    address = parse_ip_literal(literal)
    assert address is not None
    assert refusal(address) == reason


def test_public_addresses_pass_and_the_allow_list_is_honoured() -> None:
    """Global addresses pass; an allowed address passes, also when embedded in IPv6."""
    for literal in ("8.8.8.8", "0x08080808", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        address = parse_ip_literal(literal)
        assert address is not None and refusal(address) is None, literal
    loopback = ipaddress.ip_network("127.0.0.0/8")

    def allows(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return address.version == 4 and address in loopback

    mapped = parse_ip_literal("::ffff:127.0.0.1")
    assert mapped is not None and refusal(mapped, allows) is None
