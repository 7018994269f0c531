"""Which IP addresses a delivery may connect to (pure: no network, no aiohttp).

A destination is refused when its resolved address is loopback, private, link-local
(cloud metadata lives at 169.254.169.254), CGNAT (100.64.0.0/10), multicast, unspecified
or reserved, including the IPv6 forms that embed such an IPv4 address (IPv4-mapped,
IPv4-compatible, NAT64 and 6to4). Operators may allow networks explicitly
(`FLOWHOOK_ALLOW_NETWORKS`), which is how the demo and the tests reach loopback receivers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

__all__ = ["classify", "embedded_ipv4", "is_allowed", "parse_ip", "refusal"]


def parse_ip(text: str) -> IPAddress | None:
    """The address in `text` (IPv6 zone ids and brackets dropped), or None if it is a name."""
    text = text.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify(ip: IPAddress) -> str | None:
    """The kind of non-public range `ip` is in ("loopback", "private", ...), None if public."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        kind = classify(inner)
        return f"{kind} (embedded in {ip})" if kind else None
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("cgnat", isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("not global", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _in_any(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def refusal(ip: IPAddress, allow_networks: Iterable[IPNetwork] = ()) -> str | None:
    """Why a connection to `ip` is refused, or None when it is allowed."""
    networks = tuple(allow_networks)
    inner = embedded_ipv4(ip)
    if _in_any(ip, networks) or (inner is not None and _in_any(inner, networks)):
        return None
    kind = classify(ip)
    return None if kind is None else f"address {ip} is {kind}"


def is_allowed(ip: IPAddress, allow_networks: Iterable[IPNetwork] = ()) -> bool:
    """True when a delivery may connect to `ip`."""
    return refusal(ip, allow_networks) is None
