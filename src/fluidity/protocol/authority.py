"""CONNECT authorities: ``"host:port"`` or ``"[v6]:port"`` split and checked. Pure.

``parse_authority`` accepts exactly a host and a port 1-65535 and names the problem
otherwise. It checks the shape only; whether the target may be dialed is
:meth:`fluidity.protocol.policy.TargetPolicy.check_request`'s question.
"""

from __future__ import annotations

import functools
import re
from ipaddress import IPv6Address

__all__ = ["parse_authority"]

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
