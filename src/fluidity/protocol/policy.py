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

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_network

from fluidity.errors import PolicyRefused
from fluidity.protocol.addresses import (
    IPAddress,
    IPNetwork,
    describe,
    normalise,
    parse_ip_literal,
)
from fluidity.protocol.targetrules import Rule, parse_ports, parse_rules

__all__ = ["TargetPolicy", "Verdict"]

# ------------------------------------------------------------- default deny ----

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


# ----------------------------------------------------------------- verdicts ----


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


# ------------------------------------------------------------------- policy ----


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
            allow=parse_rules("targets.allow", allow),
            deny=parse_rules("targets.deny", deny),
            ports=parse_ports(ports),
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
                    f"{describe(addr)} is denied by {rule.origin}; remove that entry to allow it"
                )
        denial = _default_denial(normal)
        if denial is None:
            return Verdict(True, f"{describe(addr)} is a public address")
        allowed_by = self._allows(names, normal, port)
        if allowed_by is None:
            return _refuse(f"{describe(addr)} is {denial}; allow it with targets.allow")
        return Verdict(True, f"{describe(addr)} is {denial}, allowed by {allowed_by.origin}")

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
