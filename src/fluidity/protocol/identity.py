"""Who an agent is, read from its verified client certificate, and whether it may come in.

Pure, sans-I/O. The server's TLS layer has already proved that the certificate
chains to the private CA, is in its validity period, is meant for client
authentication and is not revoked; this module only answers the narrower
question of ``clients.allow``: *which* of the CA's clients may use this server.

An identity is the certificate's subject common name, its subjectAltName DNS
names and its subjectAltName URIs (``fluidity certs client --name alice`` gives
``CN=alice``, ``DNS:alice`` and ``URI:fluidity://client/alice``). Each
``clients.allow`` entry is an ``fnmatch`` glob (``*`` any characters, ``?`` one,
``[seq]`` a class) tried against every one of those names; one match lets the
agent in. DNS names are compared case-insensitively, as DNS does; common names
and URIs exactly. An empty list lets in every client of the CA.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from fluidity.errors import ConfigError

__all__ = ["ClientIdentity", "IdentityAllowList", "check_patterns"]

_MAX_PATTERN = 255


@dataclass(frozen=True)
class ClientIdentity:
    """The names of a verified client certificate, and its serial number (for revocation)."""

    common_name: str | None = None
    dns_names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    serial: int | None = None

    @classmethod
    def from_peercert(cls, cert: Mapping[str, object]) -> ClientIdentity:
        """Read the dictionary ``ssl.SSLObject.getpeercert()`` returns for a verified peer."""
        sans = _pairs(cert.get("subjectAltName"))
        serial = cert.get("serialNumber")
        return cls(
            common_name=_common_name(cert.get("subject")),
            dns_names=tuple(value for kind, value in sans if kind == "DNS"),
            uris=tuple(value for kind, value in sans if kind == "URI"),
            serial=int(serial, 16) if isinstance(serial, str) and serial else None,
        )

    @property
    def label(self) -> str:
        """A short name for log lines: the common name, else the first SAN, else 'agent'."""
        return self.common_name or next(iter(self.dns_names + self.uris), "agent")

    def __str__(self) -> str:
        parts = [f"CN={self.common_name}"] if self.common_name else []
        parts += [f"DNS={name}" for name in self.dns_names]
        parts += [f"URI={uri}" for uri in self.uris]
        return ", ".join(parts) or "no names"


@dataclass(frozen=True)
class IdentityAllowList:
    """``clients.allow``: globs one of which a client's names must match; empty allows all."""

    patterns: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, patterns: Sequence[str]) -> IdentityAllowList:
        """Build the list; ConfigError naming the entry if a pattern cannot be used."""
        problem = check_patterns(patterns)
        if problem:
            raise ConfigError(f"clients.allow: {problem}")
        return cls(tuple(patterns))

    def admits(self, identity: ClientIdentity) -> bool:
        """True if the list is empty or a pattern matches one of ``identity``'s names."""
        return not self.patterns or any(self._matches(p, identity) for p in self.patterns)

    def refusal(self, identity: ClientIdentity) -> str | None:
        """None if ``identity`` is admitted, else the reason to log, naming its names."""
        if self.admits(identity):
            return None
        return (
            f"client certificate ({identity}) matches no clients.allow entry; "
            "add one of its names to clients.allow in server.yaml to let it in"
        )

    @staticmethod
    def _matches(pattern: str, identity: ClientIdentity) -> bool:
        exact = [n for n in (identity.common_name, *identity.uris) if n is not None]
        if any(fnmatchcase(name, pattern) for name in exact):
            return True
        folded = pattern.lower()
        return any(fnmatchcase(name.lower(), folded) for name in identity.dns_names)


def check_patterns(patterns: Sequence[str]) -> str | None:
    """The problem with the first unusable pattern (empty, too long, spaces), or None."""
    for index, pattern in enumerate(patterns):
        if not pattern or len(pattern) > _MAX_PATTERN:
            return f"entry [{index}] must be 1-{_MAX_PATTERN} characters, got {pattern!r}"
        if any(c.isspace() or not c.isprintable() for c in pattern):
            return f"entry [{index}] {pattern!r} has spaces or control characters"
    return None


def _pairs(value: object) -> list[tuple[str, str]]:
    """``(kind, value)`` pairs from getpeercert's tuples, skipping anything malformed."""
    if not isinstance(value, tuple | list):
        return []
    return [
        (item[0], item[1])
        for item in value
        if isinstance(item, tuple | list)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], str)
    ]


def _common_name(subject: object) -> str | None:
    """The first commonName in getpeercert's subject (a tuple of RDNs of pairs)."""
    if not isinstance(subject, tuple | list):
        return None
    for rdn in subject:
        for kind, value in _pairs(rdn):
            if kind == "commonName":
                return value
    return None
