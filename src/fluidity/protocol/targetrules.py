"""The ``targets`` config section read into policy rules. Pure.

``parse_rules("targets.allow", entries)`` turns each ``HOST-GLOB[:PORT]`` or
``CIDR[:PORT]`` entry into a :class:`Rule`; ``parse_ports`` checks ``targets.ports``.
Both raise ConfigError naming the entry by its path and saying how to write it, e.g.
``targets.allow[2]: 'foo:bar' is not HOST-GLOB[:PORT] or CIDR[:PORT]: the port 'bar'
is not a number 1-65535``. A glob that looks like an address range (``10.*``) is
refused, because a glob never matches a resolved address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from ipaddress import ip_network

from fluidity.errors import ConfigError
from fluidity.protocol.addresses import IPAddress, IPNetwork, ends_in_number, parse_ip_literal

__all__ = ["Rule", "parse_ports", "parse_rules"]


@dataclass(frozen=True)
class Rule:
    """One ``targets.allow`` or ``targets.deny`` entry: a CIDR or a host glob, one port or all.

    ``origin`` (e.g. ``"targets.deny[1] '10.0.0.0/8'"``) is quoted in verdict reasons.
    CIDR rules match addresses; glob rules (lowercase, no trailing dot) match names.
    """

    origin: str
    network: IPNetwork | None = None
    glob: str | None = None
    port: int | None = None

    def matches_name(self, names: Iterable[str], port: int) -> bool:
        if self.glob is None or self.port not in (None, port):
            return False
        return any(fnmatchcase(name, self.glob) for name in names)

    def matches_address(self, addr: IPAddress, port: int) -> bool:
        if self.network is None or self.port not in (None, port):
            return False
        return addr in self.network


_ENTRY_SHAPE = "is not HOST-GLOB[:PORT] or CIDR[:PORT]"
_BRACKETED = re.compile(r"\[([^\[\]]*)\](?::(.*))?", re.DOTALL)
_GLOB = re.compile(r"[a-z0-9_*?-]+(?:\.[a-z0-9_*?-]+)*")
_IP_PATTERN_LABEL = re.compile(r"[0-9*?]+")


def parse_rules(key: str, entries: Sequence[str]) -> tuple[Rule, ...]:
    """The rules of the list at config path ``key``; ConfigError names a bad entry."""
    if isinstance(entries, str):  # a str is a Sequence[str] too: one entry per character
        raise ConfigError(f"{key}: expected a list of entries, got the string {entries!r}")
    return tuple(_parse_rule(f"{key}[{index}]", entry) for index, entry in enumerate(entries))


def _parse_rule(where: str, entry: object) -> Rule:
    if not isinstance(entry, str):
        example = "'10.0.0.0/8' or '*.example.com:443'"
        raise ConfigError(f"{where}: {entry!r} is not a string; write entries like {example}")
    try:
        body, port = _split_port(entry.strip())
        origin = f"{where} {entry!r}"
        if _is_cidr_shaped(body):
            return Rule(origin, network=_parse_cidr(body), port=port)
        return Rule(origin, glob=_parse_glob(body), port=port)
    except ValueError as exc:
        raise ConfigError(f"{where}: {entry!r} {_ENTRY_SHAPE}: {exc}") from None


def _is_cidr_shaped(body: str) -> bool:
    """Addresses have ':' (IPv6), '/' (a prefix) or a numeric last label; names have none."""
    return ":" in body or "/" in body or ends_in_number(body)


def _split_port(text: str) -> tuple[str, int | None]:
    """``"[v6]:443"``, ``"v4/8:443"``, ``"glob:443"`` → (body, port); no port → None."""
    if text.startswith("["):
        match = _BRACKETED.fullmatch(text)
        if match is None or ":" not in match[1]:
            raise ValueError("brackets hold an IPv6 address or CIDR, as in [fc00::/7]:443")
        return match[1], None if match[2] is None else _parse_port(match[2])
    if text.count(":") == 1:
        body, _, port = text.partition(":")
        return body, _parse_port(port)
    return text, None  # no colon, or an IPv6 address or CIDR without a port


def _parse_port(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 0xFFFF:
        raise ValueError(f"the port {text!r} is not a number 1-65535")
    return int(text)


def _parse_cidr(body: str) -> IPNetwork:
    if "%" in body:
        raise ValueError("IPv6 zone ids are not allowed")
    try:
        return ip_network(body)
    except ValueError as exc:
        raise ValueError(f"{exc}{_cidr_hint(body)}") from None


def _cidr_hint(body: str) -> str:
    """A corrected CIDR for a near miss: host bits set, or an inet_aton spelling."""
    try:
        return f"; did you mean {ip_network(body, strict=False)}?"
    except ValueError:
        pass
    address, slash, prefix = body.partition("/")
    try:
        literal = parse_ip_literal(address)
    except ValueError:
        return ""
    return "" if literal is None else f"; did you mean {literal}{slash}{prefix}?"


def _parse_glob(body: str) -> str:
    glob = body.lower().removesuffix(".")
    if not _GLOB.fullmatch(glob):
        raise ValueError("a host glob has letters, digits, '-', '_', '.' and the wildcards * ?")
    labels = glob.split(".")
    if all(_IP_PATTERN_LABEL.fullmatch(label) for label in labels) and any(map(str.isdigit, glob)):
        # A glob never matches a resolved address, so "10.*" would not mean 10.0.0.0/8.
        raise ValueError("it looks like an IP address or range; write a CIDR such as 10.0.0.0/8")
    return glob


def parse_ports(ports: Sequence[int]) -> frozenset[int]:
    """The ``targets.ports`` list as a set; ConfigError names an entry that is no port."""
    if isinstance(ports, str):
        raise ConfigError(f"targets.ports: expected a list of port numbers, got {ports!r}")
    for index, port in enumerate(ports):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFFFF:
            raise ConfigError(f"targets.ports[{index}]: {port!r} is not a port number 1-65535")
    return frozenset(ports)
