"""Which proxy to use: a PAC file, the environment, or a proxy URL.

Three sources say how to reach the server: a proxy URL (``http://proxy.corp:3128``,
see :func:`parse_proxy_url`), the ``HTTPS_PROXY``/``NO_PROXY`` environment
variables (:func:`proxy_from_environment`, with curl's rules), or a PAC file. Each
yields the same answer: an ordered list of :class:`ProxyChoice`.

Many companies publish a PAC file (``FindProxyForURL(url, host)`` in JavaScript)
instead of one proxy address; the answer may differ per destination and change
over time, so the agent fetches and evaluates it again before every connect
(:func:`find_proxies`). The JavaScript runs in ``pypac``'s sandbox (the ``dukpy``
interpreter, with the standard PAC built-ins such as ``shExpMatch``, ``isInNet``,
``dnsDomainIs``); fetching and evaluating block, so both run in a worker thread.

The PAC file is fetched with the standard library and *without* any proxy: it is
published inside the corporate network, where the proxy is not needed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fluidity.errors import ConfigError, UpstreamProxyError
from fluidity.proxyauth import Credentials

ProxyKind = Literal["direct", "http", "https", "socks4", "socks5"]

# A PAC file is a page of JavaScript; anything much larger is not one.
MAX_PAC_BYTES = 1024 * 1024

_KEYWORDS: dict[str, ProxyKind] = {
    "PROXY": "http",
    "HTTP": "http",
    "HTTPS": "https",
    "SOCKS": "socks5",
    "SOCKS4": "socks4",
    "SOCKS5": "socks5",
}


class PacError(UpstreamProxyError):
    """The PAC file could not be fetched or evaluated, or its answer is unusable."""


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


def load_pac_script(location: str, *, timeout: float) -> str:
    """Fetch the PAC file at an ``http(s)://`` or ``file://`` URL (blocking).

    The text is decoded as UTF-8 (PAC files are ASCII in practice). Raises
    :class:`PacError` when the file cannot be had.
    """
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme not in ("http", "https", "file"):
        raise PacError(f"PAC location {location!r} must be an http://, https:// or file:// URL")
    # No proxy for the PAC file itself (see the module docstring).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(location, timeout=timeout) as response:
            raw: bytes = response.read(MAX_PAC_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise PacError(f"cannot fetch the PAC file {location}: {_describe(exc)}") from None
    if len(raw) > MAX_PAC_BYTES:
        raise PacError(f"the PAC file {location} is over {MAX_PAC_BYTES} bytes; is it one?")
    return raw.decode("utf-8", errors="replace")


def evaluate_pac(script: str, url: str, host: str) -> str:
    """Run ``FindProxyForURL(url, host)`` from ``script`` and return its answer (blocking)."""
    # Imported here: pypac brings requests along, which only PAC users should pay for.
    from dukpy import JSRuntimeError  # type: ignore[import-untyped]
    from pypac.parser import MalformedPacError, PACFile  # type: ignore[import-untyped]

    try:
        answer = PACFile(script).find_proxy_for_url(url, host)
    except (MalformedPacError, JSRuntimeError) as exc:
        raise PacError(f"the PAC file failed for {url}: {exc}") from None
    if not isinstance(answer, str):
        raise PacError(f"the PAC file answered {answer!r} for {url}, which is not a string")
    return answer


def pac_url_for(host: str, port: int) -> str:
    """The URL the PAC file is asked about: browsers pass only scheme, host and port."""
    authority = f"[{host}]" if ":" in host else host
    return f"https://{authority}:{port}/"


def find_proxies_blocking(
    location: str, host: str, port: int, *, timeout: float
) -> list[ProxyChoice]:
    """Fetch and evaluate the PAC file for a connection to ``host:port`` (blocking)."""
    script = load_pac_script(location, timeout=timeout)
    return parse_pac_result(evaluate_pac(script, pac_url_for(host, port), host))


# The timeout is a parameter (not the caller's asyncio.timeout) because it also
# bounds the blocking fetch inside the worker thread, which cancellation cannot reach.
async def find_proxies(
    location: str,
    host: str,
    port: int,
    *,
    timeout: float,  # noqa: ASYNC109
) -> list[ProxyChoice]:
    """The PAC file's ordered proxy list for ``https://host:port/``, freshly fetched.

    Runs in a worker thread. A PAC file whose JavaScript never returns leaves that
    thread behind, but the caller gets :class:`PacError` after ``timeout`` seconds.
    """
    work = asyncio.to_thread(find_proxies_blocking, location, host, port, timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError:
        raise PacError(f"the PAC file {location} gave no answer within {timeout:g} s") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


# -- a proxy URL, and the environment -----------------------------------------------


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
