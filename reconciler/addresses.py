"""IP address literals as the OS resolver reads them, and which of them the egress guard refuses by default.

One parser and one classification for two users: the dispatcher's egress guard (``dispatcher/egress.py``,
which also judges whatever a name resolves to) and ``reconcile``'s ``private-address`` warning, which must
warn for exactly the literals the guard would refuse. Pure: no DNS, no sockets.

IPv4 is read the ``inet_aton`` way, as ``getaddrinfo`` does for a numeric host: one to four parts separated
by dots, each decimal, octal (a leading ``0``) or hex (``0x``), the last part filling the remaining bytes, so
``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``127.0.1`` all mean 127.0.0.1. IPv6 may carry
a zone id (``fe80::1%eth0``) and brackets; addresses that embed an IPv4 address (mapped, compatible, 6to4,
NAT64, Teredo) are judged by the embedded address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: An allow-list check: True when the operator allows this address (``--allow-cidr``).
Allows = Callable[[IPAddress], bool]


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Explicit tables instead of ``ipaddress``'s is_private/is_global alone: their answers changed between Python
# patch releases (3.11.7 still calls fec0::/10 global), and a security boundary must not move with them.
# First match wins; the description completes "<ip> is ...".
_IPV4_REFUSED: tuple[tuple[tuple[Network, ...], str], ...] = (
    (_nets("0.0.0.0/32"), "unspecified"),
    (_nets("0.0.0.0/8"), "in the 'this network' block (0.0.0.0/8)"),
    (_nets("127.0.0.0/8"), "a loopback address"),
    (_nets("169.254.0.0/16"), "link-local (cloud metadata)"),
    (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), "a private address"),
    (_nets("100.64.0.0/10"), "shared address space (CGNAT)"),
    (_nets("192.0.0.0/24"), "reserved for IETF protocol assignments"),
    (_nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"), "reserved for documentation"),
    (_nets("192.88.99.0/24"), "a deprecated 6to4 relay anycast address"),
    (_nets("198.18.0.0/15"), "reserved for benchmarking"),
    (_nets("224.0.0.0/4"), "a multicast address"),
    (_nets("255.255.255.255/32"), "the broadcast address"),
    (_nets("240.0.0.0/4"), "reserved"),
)

_IPV6_REFUSED: tuple[tuple[tuple[Network, ...], str], ...] = (
    (_nets("::/128"), "unspecified"),
    (_nets("::1/128"), "a loopback address"),
    (_nets("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_nets("100::/64"), "a discard-only address"),
    (_nets("2001:db8::/32"), "reserved for documentation"),
    (_nets("2001::/23"), "reserved for IETF protocol assignments"),
    (_nets("fc00::/7"), "a unique local address (ULA, private)"),
    (_nets("fe80::/10"), "link-local"),
    (_nets("fec0::/10"), "site-local (deprecated, private)"),
    (_nets("ff00::/8"), "a multicast address"),
)

_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")

# One inet_aton part: hex (``0x`` and hex digits), octal (a leading 0) or decimal. Leading zeros are allowed
# in any number (``0x0007f`` is 127); beyond them no part below 2**32 has more than 11 digits.
_PART = re.compile(r"0[xX]0*([0-9a-fA-F]{1,8})|0+([0-7]{1,11})|([1-9][0-9]{0,9})|0+")
_PART_LIMITS = {1: (2**32,), 2: (256, 2**24), 3: (256, 256, 2**16), 4: (256, 256, 256, 256)}


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, as the OS resolver reads a numeric host; None when it is a name."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)  # zone ids (``%eth0``) included
        except ValueError:
            return None
    return _parse_ipv4(text)


def _parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    parts = text.split(".")
    limits = _PART_LIMITS.get(len(parts))
    if limits is None:
        return None
    value = 0
    for part, limit in zip(parts, limits, strict=True):
        match = _PART.fullmatch(part)
        if match is None:
            return None
        hexadecimal, octal, decimal = match.groups()
        if hexadecimal is not None:
            number = int(hexadecimal, 16)
        elif octal is not None:
            number = int(octal, 8)
        else:
            number = int(decimal or "0")
        if number >= limit:
            return None
        value = value * limit + number
    return ipaddress.IPv4Address(value)


def refusal(address: IPAddress, allows: Allows = lambda _address: False) -> str | None:
    """Why the egress guard refuses ``address`` (completing "<ip> is ..."), or None when it may be used.

    ``allows`` is the operator's allow-list; an embedded IPv4 address is judged with it too.
    """
    if allows(address):
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return _first_match(address, _IPV4_REFUSED) or (None if address.is_global else "not a global address")
    return _refusal_v6(address, allows)


def _refusal_v6(address: ipaddress.IPv6Address, allows: Allows) -> str | None:
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        kind, inner = embedded
        reason = refusal(inner, allows)
        return None if reason is None else f"{kind} {inner}, which is {reason}"
    if address in _TEREDO:
        # Judged by the client it tunnels to, then refused anyway: Teredo hides where packets finally go
        # and no webhook receiver needs it.
        server, client = address.teredo or (None, None)
        for tunnelled in (client, server):
            if tunnelled is not None and (reason := refusal(tunnelled, allows)) is not None:
                return f"a Teredo address embedding {tunnelled}, which is {reason}"
        return "a Teredo tunnel address"
    found = _first_match(address, _IPV6_REFUSED)
    if found is not None:
        return found
    if address not in _GLOBAL_UNICAST_V6:
        return "outside the global unicast range 2000::/3"
    return None if address.is_global else "not a global address"


def _first_match(address: IPAddress, table: tuple[tuple[tuple[Network, ...], str], ...]) -> str | None:
    for networks, description in table:
        if any(address in net for net in networks):
            return description
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4), with the kind's name."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are themselves, not compatible forms
        return "IPv4-compatible", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None
