"""Address policy: which resolved addresses a delivery may connect to (classifier only)."""

from __future__ import annotations

import ipaddress

import pytest

from processor.dispatch.address_policy import classify, embedded_ipv4, is_allowed, parse_ip, refusal

LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.254", "cgnat"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_non_public_ranges_are_classified(text: str, kind: str) -> None:
    """Every refused range is recognised and named."""
    assert classify(ipaddress.ip_address(text)) == kind


@pytest.mark.parametrize("text", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "100.128.0.1"])
def test_public_addresses_are_allowed(text: str) -> None:
    """Global unicast addresses (including just outside CGNAT) pass the policy."""
    ip = ipaddress.ip_address(text)
    assert classify(ip) is None and is_allowed(ip)


@pytest.mark.parametrize(
    ("text", "inner"),
    [
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("64:ff9b::7f00:1", "127.0.0.1"),
        ("2002:a00:1::1", "10.0.0.1"),
        ("::10.0.0.1", "10.0.0.1"),
    ],
)
def test_ipv6_forms_of_ipv4_are_unwrapped(text: str, inner: str) -> None:
    """IPv4-mapped, NAT64, 6to4 and IPv4-compatible addresses are judged by their IPv4 address."""
    ip = ipaddress.ip_address(text)
    assert embedded_ipv4(ip) == ipaddress.ip_address(inner)
    assert not is_allowed(ip)
    assert "embedded" in (classify(ip) or "")


def test_nat64_of_public_address_is_allowed() -> None:
    """A NAT64 address of a public IPv4 address is as good as the address itself."""
    assert is_allowed(ipaddress.ip_address("64:ff9b::808:808"))


def test_allow_networks_open_exactly_those_networks() -> None:
    """An allowed network lets its addresses through and nothing else."""
    assert is_allowed(ipaddress.ip_address("127.0.0.1"), LOOPBACK_ONLY)
    assert is_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), LOOPBACK_ONLY)
    assert not is_allowed(ipaddress.ip_address("::1"), LOOPBACK_ONLY)
    assert refusal(ipaddress.ip_address("169.254.169.254"), LOOPBACK_ONLY) == (
        "address 169.254.169.254 is link-local"
    )


def test_parse_ip_tells_literals_from_names() -> None:
    """Bracketed IPv6 and zone ids parse; host names do not."""
    assert parse_ip("[::1]") == ipaddress.ip_address("::1")
    assert parse_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_ip("metadata.google.internal") is None
