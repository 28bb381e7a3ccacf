"""IP address literals in every spelling, and the IPv4 address an IPv6 address carries. Pure.

The target policy (:mod:`fluidity.protocol.policy`) judges addresses, so it must see
through the spellings a resolver accepts and the IPv6 forms that route to IPv4:

- ``parse_ip_literal(host)`` reads every IPv4 spelling inet_aton(3) accepts
  (``2852039166``, ``0xA9FEA9FE``, ``169.254.43518``...) and IPv6 with or without
  brackets; it answers None for a name and raises ValueError for a near-address.
- ``ends_in_number(host)`` is the WHATWG URL rule: a host whose last label is a number
  is an IPv4 address or nothing.
- ``normalise(addr)`` returns the IPv4 address an IPv6 address embeds (IPv4-mapped,
  IPv4-compatible, IPv4-translated, NAT64, 6to4), because that is where its packets end
  up; ``describe(addr)`` names that embedding in text for a verdict's reason.
"""

from __future__ import annotations

import functools
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeAlias

__all__ = [
    "IPAddress",
    "IPNetwork",
    "describe",
    "ends_in_number",
    "normalise",
    "parse_ip_literal",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

# inet_aton(3) accepts one to four dot-separated parts, each decimal, 0x-hex or
# 0-prefixed octal; every part but the last is one byte and the last fills the
# remaining bytes, so "127.1" is 127.0.0.1 and "169.254.43518" is 169.254.169.254.
_V4_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
# A host whose last label is a number is an IPv4 address or nothing (the WHATWG URL
# rule): no top-level domain is numeric, and passing "1.2.3.256" or "08.1" on as a
# name would let the resolver interpret it as it pleases.
_NUMBER_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


def ends_in_number(host: str) -> bool:
    """Whether the last label of ``host`` (trailing dot ignored) is a number, any base."""
    return _NUMBER_LABEL.fullmatch(host.removesuffix(".").rpartition(".")[2]) is not None


@functools.lru_cache(maxsize=4096)  # pure; checked on the path of every new tunnel
def parse_ip_literal(host: str) -> IPAddress | None:
    """Return the address ``host`` spells, or None when ``host`` is a name, not an address.

    Accepts every IPv4 spelling inet_aton(3) accepts (decimal, hex and octal parts, one to
    four of them, mixed) with an optional trailing dot, and IPv6 with or without brackets.
    Raises ValueError when ``host`` has the shape of an address but is not a valid one: a
    numeric last label out of range or malformed, an IPv6 zone id, unbalanced brackets.
    """
    if host.startswith("[") or ":" in host:
        return _parse_ipv6(host)
    if not ends_in_number(host):
        return None
    return _parse_ipv4(host, host.removesuffix(".").split("."))


def _parse_ipv6(host: str) -> IPv6Address:
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if "%" in inner:
        raise ValueError(f"{host!r} has an IPv6 zone id; a target must be an address without one")
    try:
        return IPv6Address(inner)
    except ValueError:
        raise ValueError(f"{host!r} is not a valid IPv6 address") from None


def _parse_ipv4(host: str, labels: list[str]) -> IPv4Address:
    if len(labels) > 4 or not all(_V4_PART.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} ends in a number but is not an IPv4 address")
    *head, last = [_part_value(label) for label in labels]
    last_bits = 8 * (4 - len(head))
    if any(value > 0xFF for value in head) or last >= 1 << last_bits:
        raise ValueError(f"{host!r} is out of range for an IPv4 address")
    number = 0
    for value in head:
        number = number << 8 | value
    return IPv4Address(number << last_bits | last)


def _part_value(part: str) -> int:
    # More than 11 significant digits overflow 32 bits in every base; answering
    # early also keeps int() away from absurdly long inputs.
    if len(part.lstrip("0xX")) > 11:
        return 1 << 32
    if part[:2] in ("0x", "0X"):
        return int(part[2:], 16)
    return int(part, 8) if part.startswith("0") else int(part)


# Where an IPv6 address carries an IPv4 address: (range, octets holding it, name).
_EMBEDDINGS: tuple[tuple[IPv6Network, tuple[int, ...], str], ...] = (
    (IPv6Network("::ffff:0:0/96"), (12, 13, 14, 15), "IPv4-mapped"),
    (IPv6Network("::ffff:0:0:0/96"), (12, 13, 14, 15), "IPv4-translated"),
    (IPv6Network("64:ff9b::/96"), (12, 13, 14, 15), "NAT64"),
    # RFC 6052's /48 format: the IPv4 address straddles the reserved octet 8.
    (IPv6Network("64:ff9b:1::/48"), (6, 7, 9, 10), "local-use NAT64"),
    (IPv6Network("2002::/16"), (2, 3, 4, 5), "6to4"),
    (IPv6Network("::/96"), (12, 13, 14, 15), "IPv4-compatible"),
)


def _embedded_ipv4(addr: IPv6Address) -> tuple[IPv4Address, str] | None:
    if int(addr) <= 1:  # :: and ::1 are themselves, not IPv4-compatible 0.0.0.0/0.0.0.1
        return None
    packed = addr.packed
    for network, octets, kind in _EMBEDDINGS:
        if addr in network:
            return IPv4Address(bytes(packed[i] for i in octets)), kind
    return None


def normalise(addr: IPAddress) -> IPAddress:
    """Return the IPv4 address an IPv6 address embeds (mapped, compatible, NAT64, 6to4...).

    IPv4 addresses, ``::``, ``::1`` and IPv6 addresses that embed nothing come back unchanged.
    """
    if isinstance(addr, IPv4Address):
        return addr
    embedded = _embedded_ipv4(addr)
    return addr if embedded is None else embedded[0]


def describe(addr: IPAddress) -> str:
    """``addr`` as text for a reason, naming the IPv4 address it embeds if any."""
    embedded = _embedded_ipv4(addr) if isinstance(addr, IPv6Address) else None
    return str(addr) if embedded is None else f"{addr} ({embedded[1]} {embedded[0]})"
