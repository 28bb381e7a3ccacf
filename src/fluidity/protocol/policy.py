"""The server's target policy: which ``host:port`` it may dial for an agent. Pure, sans-I/O.

The server runs next to cloud metadata endpoints and private networks, so a tunnel
that dialed whatever an agent named would be a server-side request forgery (SSRF)
machine. The I/O layer applies the policy twice around one name resolution:

1. ``check_request(host, port)`` before resolving refuses denied names and ports,
   malformed or non-ASCII hosts, ``localhost`` names, and IP literals in every
   spelling the C resolver accepts (``2852039166``, ``0xA9FEA9FE``, ``169.254.43518``,
   ``[::ffff:a9fe:a9fe]``...). A refused target is never resolved or dialed.
2. ``filter_addresses(host, port, addresses)`` after the name was resolved once keeps
   only the addresses that may be dialed; the server connects to exactly those, so a
   name whose DNS answer points inside (DNS rebinding) gains nothing.

Addresses are judged in their *normalised* form: an IPv6 address that carries an
IPv4 address (IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64, 6to4) is judged
as that IPv4 address, because that is where its packets end up.

For one target the first of these that applies decides:

    deny entry (CIDR or glob) ─▶ refused      deny always wins, over allow too
    port not in targets.ports ─▶ refused      when targets.ports is non-empty
    default-deny range / localhost name:
        an allow entry covers it ─▶ allowed   allow exempts from the default only
        otherwise               ─▶ refused
    anything else ──────────────▶ allowed     public addresses need no allow entry
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import TypeAlias

from fluidity.errors import ConfigError, PolicyRefused

__all__ = [
    "IPAddress",
    "IPNetwork",
    "Rule",
    "TargetPolicy",
    "Verdict",
    "normalise",
    "parse_authority",
    "parse_ip_literal",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

# ---------------------------------------------------------------- addresses ----

# inet_aton(3) accepts one to four dot-separated parts, each decimal, 0x-hex or
# 0-prefixed octal; every part but the last is one byte and the last fills the
# remaining bytes, so "127.1" is 127.0.0.1 and "169.254.43518" is 169.254.169.254.
_V4_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
# A host whose last label is a number is an IPv4 address or nothing (the WHATWG URL
# rule): no top-level domain is numeric, and passing "1.2.3.256" or "08.1" on as a
# name would let the resolver interpret it as it pleases.
_NUMBER_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


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
    labels = host.removesuffix(".").split(".")
    if not _NUMBER_LABEL.fullmatch(labels[-1]):
        return None
    return _parse_ipv4(host, labels)


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


def _describe(addr: IPAddress) -> str:
    """``addr`` as text for a reason, naming the IPv4 address it embeds if any."""
    embedded = _embedded_ipv4(addr) if isinstance(addr, IPv6Address) else None
    return str(addr) if embedded is None else f"{addr} ({embedded[1]} {embedded[0]})"


# Refused unless an allow entry covers them. First match names the reason, so the
# named endpoints come before the ranges that contain them.
_DEFAULT_DENY: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ip_network(cidr), what)
    for cidr, what in (
        ("169.254.169.254/32", "link-local (cloud metadata)"),
        ("169.254.170.2/32", "link-local (cloud credentials: ECS task metadata)"),
        ("169.254.170.23/32", "link-local (cloud credentials: EKS pod identity)"),
        ("fd00:ec2::254/128", "unique-local (cloud metadata: AWS IPv6)"),
        ("100.100.100.200/32", "CGNAT shared space (cloud metadata: Alibaba)"),
        ("0.0.0.0/8", "unspecified ('this network', RFC 1122)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "CGNAT shared space (RFC 6598)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking (RFC 2544)"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved (RFC 1112)"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated, RFC 3879)"),
        ("fc00::/7", "unique-local (RFC 4193)"),
        ("ff00::/8", "multicast"),
    )
)


def _default_denial(addr: IPAddress) -> str | None:
    """What default-deny range holds the (normalised) ``addr``, or None if it is public."""
    return next((what for network, what in _DEFAULT_DENY if addr in network), None)


# -------------------------------------------------------------------- names ----

_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


def _canonical_name(host: str) -> str:
    """``host`` lowercased without its trailing dot; ValueError if it is not a DNS name.

    Non-ASCII is refused, not converted: the resolver's IDNA step would map full-width
    digits and the ideographic full stop (U+FF11, U+3002...) onto "127.0.0.1" behind our back.
    """
    if not host.isascii():
        raise ValueError(f"{host!r} is not ASCII; send the IDNA (punycode) form of the name")
    name = host.lower().removesuffix(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{host!r} is not a valid host name")
    return name


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")  # RFC 6761 §6.3


def _target_names(host: str) -> tuple[tuple[str, ...], IPAddress | None]:
    """The names host-glob rules see for ``host``, and the address if ``host`` is a literal.

    For a literal they are its canonical text and that of its normalised form.
    Raises ValueError naming the problem when ``host`` is neither a name nor an address.
    """
    literal = parse_ip_literal(host)
    if literal is None:
        return (_canonical_name(host),), None
    texts = dict.fromkeys((str(literal), str(normalise(literal))))
    return tuple(texts), literal


# -------------------------------------------------------------------- rules ----


@dataclass(frozen=True)
class Verdict:
    """The policy's answer; ``reason`` names the rule or range and, when refused, the fix."""

    allowed: bool
    reason: str

    def raise_if_refused(self) -> None:
        """Raise PolicyRefused (answered 403) carrying the reason, if this is a refusal."""
        if not self.allowed:
            raise PolicyRefused(self.reason)


def _refuse(reason: str) -> Verdict:
    return Verdict(allowed=False, reason=reason)


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


@dataclass(frozen=True)
class TargetPolicy:
    """Which targets the server may dial. ``TargetPolicy()`` is the default policy alone."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    ports: frozenset[int] = frozenset()

    @classmethod
    def from_config(
        cls, allow: Sequence[str] = (), deny: Sequence[str] = (), ports: Sequence[int] = ()
    ) -> TargetPolicy:
        """Build the policy from the ``targets`` config section.

        Raises ConfigError naming the bad entry, e.g. ``targets.allow[2]: 'foo:bar' is not
        HOST-GLOB[:PORT] or CIDR[:PORT]: the port 'bar' is not a number 1-65535``.
        """
        return cls(
            allow=_parse_rules("targets.allow", allow),
            deny=_parse_rules("targets.deny", deny),
            ports=_parse_ports(ports),
        )

    def check_request(self, host: str, port: int) -> Verdict:
        """Judge ``host:port`` before anything is resolved: a refused target is never dialed.

        Refuses malformed hosts and ports, names and literals matched by a deny entry,
        ports outside ``targets.ports``, ``localhost`` names and denied IP literals (in any
        spelling) unless allowed. A name that passes still needs ``filter_addresses``.
        """
        try:
            names, literal = _target_names(host)
        except ValueError as exc:
            return _refuse(str(exc))
        if not 1 <= port <= 0xFFFF:
            return _refuse(f"port {port} is not a port number 1-65535")
        for rule in self.deny:
            if rule.matches_name(names, port):
                return _refuse(
                    f"{names[0]}:{port} is denied by {rule.origin}; remove that entry to allow it"
                )
        if literal is not None:
            verdict = self._judge_address(names, literal, port)
            if not verdict.allowed:
                return verdict
            return self._check_port(port) or verdict
        return self._check_port(port) or self._check_name(names, port)

    def filter_addresses(
        self, host: str, port: int, addresses: Iterable[IPAddress]
    ) -> tuple[list[IPAddress], Verdict]:
        """Keep the resolved ``addresses`` of ``host`` that may be dialed on ``port``.

        Returns them as given (dial ``str(addr)``), in order, duplicates removed, with a
        verdict; the list is empty exactly when the verdict refuses, and then the reason
        says why each address was dropped. ``check_request`` is applied first.
        """
        verdict = self.check_request(host, port)
        if not verdict.allowed:
            return [], verdict
        names, _ = _target_names(host)
        kept: list[IPAddress] = []
        dropped: list[str] = []
        for addr in dict.fromkeys(addresses):
            judged = self._judge_address(names, addr, port)
            if judged.allowed:
                kept.append(addr)
            else:
                dropped.append(judged.reason)
        return kept, _summarise(host, len(kept), dropped)

    def _check_port(self, port: int) -> Verdict | None:
        if not self.ports or port in self.ports:
            return None
        listed = ", ".join(str(p) for p in sorted(self.ports))
        return _refuse(f"port {port} is not in targets.ports ({listed}); add it there to allow it")

    def _check_name(self, names: tuple[str, ...], port: int) -> Verdict:
        name = names[0]
        if _is_localhost(name) and not self._allows(names, None, port):
            return _refuse(f"{name} is a loopback name (RFC 6761); allow it with targets.allow")
        return Verdict(True, f"{name}:{port} passes the name rules; resolved addresses come next")

    def _judge_address(self, names: tuple[str, ...], addr: IPAddress, port: int) -> Verdict:
        """Deny entries (on ``addr`` as given or normalised), then the default deny."""
        normal = normalise(addr)
        for rule in self.deny:
            if rule.matches_address(addr, port) or rule.matches_address(normal, port):
                return _refuse(
                    f"{_describe(addr)} is denied by {rule.origin}; remove that entry to allow it"
                )
        denial = _default_denial(normal)
        if denial is None:
            return Verdict(True, f"{_describe(addr)} is a public address")
        allowed_by = self._allows(names, normal, port)
        if allowed_by is None:
            return _refuse(f"{_describe(addr)} is {denial}; allow it with targets.allow")
        return Verdict(True, f"{_describe(addr)} is {denial}, allowed by {allowed_by.origin}")

    def _allows(self, names: tuple[str, ...], addr: IPAddress | None, port: int) -> Rule | None:
        """The first allow entry matching one of ``names`` or the normalised ``addr``."""
        for rule in self.allow:
            if rule.matches_name(names, port):
                return rule
            if addr is not None and rule.matches_address(addr, port):
                return rule
        return None


def _summarise(host: str, kept: int, dropped: list[str]) -> Verdict:
    if kept:
        why = f"; dropped {len(dropped)}: {_first_few(dropped)}" if dropped else ""
        return Verdict(True, f"{kept} address(es) of {host} may be dialed{why}")
    if not dropped:
        return _refuse(f"{host} resolved to no addresses")
    return _refuse(f"no address of {host} may be dialed: {_first_few(dropped)}")


def _first_few(reasons: list[str], shown: int = 3) -> str:
    more = f"; and {len(reasons) - shown} more" if len(reasons) > shown else ""
    return "; ".join(reasons[:shown]) + more


# ------------------------------------------------------------------- config ----

_ENTRY_SHAPE = "is not HOST-GLOB[:PORT] or CIDR[:PORT]"
_BRACKETED = re.compile(r"\[([^\[\]]*)\](?::(.*))?", re.DOTALL)
_GLOB = re.compile(r"[a-z0-9_*?-]+(?:\.[a-z0-9_*?-]+)*")
_IP_PATTERN_LABEL = re.compile(r"[0-9*?]+")


def _parse_rules(key: str, entries: Sequence[str]) -> tuple[Rule, ...]:
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
    last_label = body.removesuffix(".").rpartition(".")[2]
    return ":" in body or "/" in body or _NUMBER_LABEL.fullmatch(last_label) is not None


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


def _parse_ports(ports: Sequence[int]) -> frozenset[int]:
    if isinstance(ports, str):
        raise ConfigError(f"targets.ports: expected a list of port numbers, got {ports!r}")
    for index, port in enumerate(ports):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFFFF:
            raise ConfigError(f"targets.ports[{index}]: {port!r} is not a port number 1-65535")
    return frozenset(ports)


# ---------------------------------------------------------------- authority ----

_AUTHORITY = re.compile(r"(?:\[(?P<v6>[^\[\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[^:]*)")
_HOST_CHARS = re.compile(r"[A-Za-z0-9._-]+")


@functools.lru_cache(maxsize=4096)  # pure; on the path of every new tunnel and forward
def parse_authority(authority: str) -> tuple[str, int]:
    """Split a CONNECT authority ``"host:port"`` or ``"[v6]:port"`` into (host, port).

    The host comes back as sent, without brackets. Raises ValueError naming the problem
    when the authority is not exactly a host and a port 1-65535: empty, missing port,
    whitespace or control characters, non-ASCII, userinfo, a path, percent-encoding or a
    zone id, an unbracketed IPv6 address. Whether the target may be dialed is
    ``TargetPolicy.check_request``'s question, not this function's.
    """
    problem = _character_problem(authority)
    match = None if problem else _AUTHORITY.fullmatch(authority)
    if match is not None:
        bracketed = match["v6"] is not None
        host, port = (match["v6"] if bracketed else match["host"]), match["port"]
        problem = _host_problem(host, bracketed) or _port_problem(port)
        if problem is None:
            return host, int(port)
    raise ValueError(f"{authority!r} is not a valid host:port: {problem or _shape(authority)}")


def _character_problem(authority: str) -> str | None:
    if not authority:
        return "it is empty"
    if not authority.isascii():
        return "it is not ASCII; send the host in IDNA (punycode) form"
    if any(c.isspace() or not c.isprintable() for c in authority):
        return "it contains whitespace or a control character"
    if "@" in authority:
        return "it contains userinfo ('@'); send only host:port"
    if any(c in authority for c in "/?#\\"):
        return "it contains a path or query; send only host:port"
    if "%" in authority:
        return "it contains '%' (percent-encoding or an IPv6 zone id), which is not supported"
    return None


def _shape(authority: str) -> str:
    if "[" in authority or "]" in authority:
        return "an IPv6 address is written [address]:port, as in [::1]:443"
    if ":" not in authority:
        return "the port is missing; expected host:port such as example.com:443"
    return "an IPv6 address must be in brackets, as in [2001:db8::1]:443"


def _host_problem(host: str, bracketed: bool) -> str | None:
    if not host:
        return "the host is empty"
    if bracketed:
        try:
            IPv6Address(host)
        except ValueError:
            return f"[{host}] is not an IPv6 address; brackets are for IPv6 only"
        return None
    if len(host) > 254:
        return "the host is longer than 254 characters"
    if not _HOST_CHARS.fullmatch(host):
        return f"the host {host!r} has characters other than letters, digits, '.', '-', '_'"
    return None


def _port_problem(port: str) -> str | None:
    if not port:
        return "the port is missing; expected host:port such as example.com:443"
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 0xFFFF:
        return f"the port {port!r} is not a number 1-65535"
    return None
