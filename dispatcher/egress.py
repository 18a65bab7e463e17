"""The egress guard: deliveries go to public addresses only, unless the operator allows more (SPEC section 5).

Webhook files come from many teams; without this guard a target URL could make the dispatcher POST to the
cloud metadata service, a database on the private network or the sidecar's own neighbours (SSRF). The check
runs on the addresses a host *resolves to*, and ``dispatcher/http.py`` connects to exactly those checked
addresses, so DNS rebinding (answering a public address to the check and a private one to the connect) does
not get through. Like Svix and Hook0, addresses that embed an IPv4 address in IPv6 (mapped, compatible, 6to4,
NAT64, Teredo) are judged by the embedded address.

Operators allow extra networks with ``dispatch run --allow-cidr CIDR`` (a process flag, never a webhook
field).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher.errors import ConnectError, EgressDenied

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``socket.getaddrinfo``'s shape: (host, port, family, type) -> [(family, type, proto, canonname, sockaddr)].
Resolver = Callable[[str, int, int, int], Sequence[tuple[Any, ...]]]

#: A checked address: (family, sockaddr) ready for ``socket.socket(family).connect(sockaddr)``.
CheckedAddress = tuple[int, tuple[Any, ...]]


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


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses deliveries may go to: global unicast, plus the operator's ``allowed`` networks."""

    allowed: tuple[Network, ...] = ()

    def refusal(self, ip: str) -> str | None:
        """Why ``ip`` is refused (a sentence naming it), or None when a delivery may go there."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return f"{ip!r} is not an IP address"
        description = self._judge(address)
        return None if description is None else f"{ip} is {description}"

    def _allows(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.allowed)

    def _judge(self, address: IPAddress) -> str | None:
        if self._allows(address):
            return None
        if isinstance(address, ipaddress.IPv4Address):
            return _first_match(address, _IPV4_REFUSED) or (
                None if address.is_global else "not a global address"
            )
        return self._judge_v6(address)

    def _judge_v6(self, address: ipaddress.IPv6Address) -> str | None:
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            kind, inner = embedded
            reason = self._judge(inner)
            return None if reason is None else f"{kind} {inner}, which is {reason}"
        if address in _TEREDO:
            # Judged by the client it tunnels to, then refused anyway: Teredo hides where packets finally go
            # and no webhook receiver needs it.
            server, client = address.teredo or (None, None)
            for tunnelled in (client, server):
                if tunnelled is not None and (reason := self._judge(tunnelled)) is not None:
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


def resolve_checked(
    host: str, port: int, policy: EgressPolicy, *, resolver: Resolver = socket.getaddrinfo
) -> list[CheckedAddress]:
    """Resolve ``host`` and return its addresses once every one of them passed the guard.

    IP literals go through the resolver too: odd forms such as ``127.1`` or ``2130706433`` mean whatever the
    OS makes of them (127.0.0.1), and the guard must judge that, not a parse of its own. If ANY address is
    refused the whole target is refused, even when others are public: a name that also points inside is
    either a mistake or a rebinding attempt, and picking the "good" address would hide it.

    Raises EgressDenied naming the host and the reason; ConnectError when the name resolves to nothing usable.
    Resolver errors (``socket.gaierror``) propagate: ``dispatcher/http.py`` translates them.
    """
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    checked: list[CheckedAddress] = []
    for family, _type, _proto, _canonname, sockaddr in resolver(
        name, port, socket.AF_UNSPEC, socket.SOCK_STREAM
    ):
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise EgressDenied(f"{host}: resolves to an address of unsupported family {family!r}")
        ip = str(sockaddr[0])
        reason = policy.refusal(ip)
        if reason is not None:
            via = "" if ip == name else f"{host} resolves to {ip}; "
            raise EgressDenied(f"{via}{reason} (allow with --allow-cidr)")
        if (family, tuple(sockaddr)) not in checked:
            checked.append((family, tuple(sockaddr)))
    if not checked:
        raise ConnectError(f"{host} resolves to no address")
    return checked


def parse_cidr(text: str) -> Network:
    """A network for ``--allow-cidr`` (``10.0.0.0/8``, ``fd00::/8``; a bare address means just that one).

    Raises ValueError naming the value; host bits set (``10.1.2.3/8``) are refused with the network meant,
    because silently widening or narrowing an allow-list is how accidents happen.
    """
    value = text.strip()
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        try:
            meant = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"invalid CIDR {text!r}: {exc}") from None
        raise ValueError(f"invalid CIDR {text!r}: host bits set, did you mean {meant}?") from None
