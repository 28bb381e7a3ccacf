"""Which way to the server, in pure terms: proxy URLs, PAC answers, the environment.

A proxy URL (``http://user:pass@proxy.corp:3128``), the ``HTTPS_PROXY`` and
``NO_PROXY`` variables (with curl's rules) and a PAC file's answer
(``"PROXY p.corp:3128; DIRECT"``) all come down to an ordered list of
:class:`ProxyChoice` and the :class:`Credentials` to offer. Parsing them does no
I/O; fetching and running a PAC file is :mod:`fluidity.agent.pac`'s job.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from fluidity.errors import ConfigError, PacError

ProxyKind = Literal["direct", "http", "https", "socks4", "socks5"]


_KEYWORDS: dict[str, ProxyKind] = {
    "PROXY": "http",
    "HTTP": "http",
    "HTTPS": "https",
    "SOCKS": "socks5",
    "SOCKS4": "socks4",
    "SOCKS5": "socks5",
}


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password for the proxy; either may be absent (Kerberos)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ProxyChoice:
    """One entry of a PAC answer: ``DIRECT`` or a proxy of some ``kind`` at host:port."""

    kind: ProxyKind
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "direct":
            return "DIRECT"
        host = f"[{self.host}]" if ":" in self.host else self.host
        keyword = "PROXY" if self.kind == "http" else self.kind.upper()
        return f"{keyword} {host}:{self.port}"


DIRECT = ProxyChoice("direct")


def parse_pac_result(value: str) -> list[ProxyChoice]:
    """Parse a ``FindProxyForURL`` answer such as ``"PROXY p.corp:3128; DIRECT"``.

    Entries are tried in order by the caller. An empty answer means DIRECT, as in
    browsers; any malformed entry raises :class:`PacError` naming it.
    """
    choices = [_parse_entry(entry) for entry in value.split(";") if entry.strip()]
    return choices or [DIRECT]


def _parse_entry(entry: str) -> ProxyChoice:
    words = entry.split()
    if len(words) == 1 and words[0].upper() == "DIRECT":
        return DIRECT
    kind = _KEYWORDS.get(words[0].upper()) if len(words) == 2 else None
    if kind is None:
        raise PacError(f"the PAC file answered {entry.strip()!r}, which is not a proxy entry")
    address = urllib.parse.urlsplit(f"//{words[1]}")
    try:
        port = address.port
    except ValueError:
        port = None
    if not address.hostname or port is None:
        raise PacError(f"the PAC file answered {entry.strip()!r}: expected host:port")
    return ProxyChoice(kind, address.hostname, port)


def parse_proxy_url(url: str, key: str) -> tuple[ProxyChoice, Credentials]:
    """``http://[user[:password]@]host:port`` → the proxy and the credentials in it.

    Raises :class:`ConfigError` naming ``key`` (never showing the password).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ConfigError(
            f"{key}: {mask_url(url)!r} is not supported; write http://proxy.corp:3128 "
            "(TLS to the proxy itself is not supported), env, or pac+http://host/proxy.pac"
        )
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(
            f"{key}: {mask_url(url)!r} needs a host and a port, as in http://proxy.corp:3128"
        )
    username = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return ProxyChoice("http", parts.hostname, port), Credentials(username, password)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


def proxy_from_environment(
    host: str, port: int, environ: Mapping[str, str]
) -> tuple[list[ProxyChoice], Credentials]:
    """The proxy ``HTTPS_PROXY`` names for ``host:port``, or DIRECT, as curl decides.

    The lower-case variables win over the upper-case ones; an unset or empty
    ``https_proxy``, or a ``no_proxy`` entry matching the host, means DIRECT. A value
    without a scheme (``proxy.corp:3128``) is taken as ``http://``.
    """
    value = (environ.get("https_proxy") or environ.get("HTTPS_PROXY") or "").strip()
    if not value:
        return [DIRECT], Credentials()
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    if no_proxy_matches(host, port, no_proxy):
        return [DIRECT], Credentials()
    if "://" not in value:
        value = f"http://{value}"
    proxy, credentials = parse_proxy_url(value, "HTTPS_PROXY")
    return [proxy], credentials


def no_proxy_matches(host: str, port: int, no_proxy: str) -> bool:
    """Whether a ``NO_PROXY`` value exempts ``host:port`` from the proxy.

    Entries are separated by commas or spaces: ``*`` (everything), a domain
    (``corp.example`` or ``.corp.example``: that name and every name under it), an
    IP address or a CIDR (``10.0.0.0/8``) for IP literal hosts, each optionally with
    ``:port``. Names are not resolved.
    """
    name = host.strip("[]").rstrip(".").lower()
    for entry in no_proxy.replace(",", " ").split():
        pattern, entry_port = _split_port(entry.lower())
        if entry_port is not None and entry_port != port:
            continue
        if pattern == "*" or _no_proxy_entry_matches(name, pattern):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port`` or a bare pattern (an IPv6 CIDR has many colons)."""
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return address, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        pattern, _, port = entry.partition(":")
        return pattern, int(port) if port.isdigit() else None
    return entry, None


def _no_proxy_entry_matches(name: str, pattern: str) -> bool:
    try:
        network = ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        domain = pattern.removeprefix("*").strip(".")
        return bool(domain) and (name == domain or name.endswith(f".{domain}"))
    try:
        return ipaddress.ip_address(name) in network
    except ValueError:
        return False
