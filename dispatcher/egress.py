"""The egress guard: deliveries go to public addresses only, unless the operator allows more (SPEC section 5).

Webhook files come from many teams; without this guard a target URL could make the dispatcher POST to the
cloud metadata service, a database on the private network or the sidecar's own neighbours (SSRF). The check
runs on the addresses a host *resolves to*, and ``dispatcher/http.py`` connects to exactly those checked
addresses, so DNS rebinding (answering a public address to the check and a private one to the connect) does
not get through. Like Svix and Hook0, addresses that embed an IPv4 address in IPv6 (mapped, compatible, 6to4,
NAT64, Teredo) are judged by the embedded address. The address tables and the parser of address literals
live in ``reconciler/addresses.py``, shared with ``reconcile``'s ``private-address`` warning.

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
from reconciler import addresses
from reconciler.addresses import IPAddress, Network, parse_ip_literal

#: ``socket.getaddrinfo``'s shape: (host, port, family, type) -> [(family, type, proto, canonname, sockaddr)].
Resolver = Callable[[str, int, int, int], Sequence[tuple[Any, ...]]]

#: A checked address: (family, sockaddr) ready for ``socket.socket(family).connect(sockaddr)``.
CheckedAddress = tuple[int, tuple[Any, ...]]


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses deliveries may go to: global unicast, plus the operator's ``allowed`` networks."""

    allowed: tuple[Network, ...] = ()

    def refusal(self, ip: str) -> str | None:
        """Why ``ip`` is refused (a sentence naming it), or None when a delivery may go there."""
        address = parse_ip_literal(ip)
        if address is None:
            return f"{ip!r} is not an IP address"
        description = addresses.refusal(address, self._allows)
        return None if description is None else f"{ip} is {description}"

    def _allows(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.allowed)


def resolve_checked(
    host: str, port: int, policy: EgressPolicy, *, resolver: Resolver = socket.getaddrinfo
) -> list[CheckedAddress]:
    """Resolve ``host`` and return its addresses once every one of them passed the guard.

    An IP literal the guard refuses (in any spelling the OS reads: ``127.1``, ``2130706433``, ``[::1]``) is
    refused before the resolver is asked. Literals still go through the resolver: what the OS makes of them
    is what is connected to, so that is judged too, not only the parse. If ANY address is
    refused the whole target is refused, even when others are public: a name that also points inside is
    either a mistake or a rebinding attempt, and picking the "good" address would hide it.

    Raises EgressDenied naming the host and the reason; ConnectError when the name resolves to nothing usable.
    Resolver errors (``socket.gaierror``) propagate: ``dispatcher/http.py`` translates them.
    """
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    literal = parse_ip_literal(name)
    if literal is not None:
        reason = policy.refusal(str(literal))
        if reason is not None:
            via = "" if str(literal) == name else f"{host} is the address {literal}; "
            raise EgressDenied(f"{via}{reason} (allow with --allow-cidr)")
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
