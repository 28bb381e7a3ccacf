"""The live dashboard: one HTML page and the rules for who may read and press it.

The page (``dashboard.html``, shipped as package data: inline CSS, JS and SVG,
nothing fetched from elsewhere) polls ``DATA_PATH`` every two seconds and
draws what it gets: the agent's answer (``role: agent``) or the server's
(``role: server``). The agent serves it on its proxy port
(:mod:`fluidity.agent.console`), the server on its ``metrics:`` listener
(:mod:`fluidity.server.console`).

Both listen on loopback by default, and any web page the user visits can
send requests to 127.0.0.1. So, for every dashboard request:

* the ``Host`` must be an IP address or ``localhost``: a DNS-rebinding page
  (``evil.example`` resolved to 127.0.0.1) is then neither served the data
  nor allowed to press a button;
* an action (``POST``) must come from the page itself: a cross-site
  ``Sec-Fetch-Site`` or an ``Origin`` other than the ``Host`` is refused, and
  it must carry ``ACTION_HEADER``, which no cross-origin page can set without
  a CORS preflight this server never grants;
* beyond loopback, the proxy's credentials: ``Proxy-Authorization`` as for
  ``/fluidity/status``, or ``Authorization`` with the same user and password
  (a browser opening the page directly sends that one, after a 401).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fluidity.errors import FluidityError

PAGE_PATH = "/"
DATA_PATH = "/fluidity/dashboard.json"
ACTION_PATHS = {
    "/fluidity/reconnect": "reconnect",
    "/fluidity/wake": "wake",
    "/fluidity/kill": "kill",
}
ACTION_HEADER = "X-Fluidity-Action"
HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/json"
# The page runs its own inline code and talks to its own origin only; no frame may hold
# it (a button under someone else's page would be a click away from being pressed).
PAGE_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data:; connect-src 'self'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
)
DATA_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))

# What to do about each kind of error the log holds: the kinds are the metrics labels
# (docs/observability.md); the message beside it is the client's answer, word for word.
FIXES: Mapping[str, str] = {
    "policy_refused": "The server's targets: policy does not allow this target: ask its "
    "operator to allow it, or add the host to direct: in agent.yaml.",
    "unreachable": "The server could not reach the target: check the host name and port, "
    "and that the site is up.",
    "resolve_failed": "The server cannot resolve the name: check the spelling, or the "
    "server's DNS.",
    "dial_refused": "Nothing listens at that port on the target: check the port.",
    "dial_timeout": "The target did not answer in time (dial.connect_timeout): it may be "
    "down or firewalled from the server.",
    "circuit_open": "The target failed repeatedly, so the server stops trying for a while "
    "(circuit_breaker.reset_after): fix the target, then retry.",
    "no_tunnel": "The tunnel to the server is down: see its state and last error above, "
    "or press Reconnect now.",
    "stream_limit": "The tunnel carries the server's maximum of streams "
    "(limits.max_streams_per_tunnel): close some connections, or raise the limit.",
    "tunnel_error": "The tunnel failed under this request: retry; if it goes on, "
    "see the tunnel's last error.",
    "direct_path": "A direct: host could not be reached from this machine: check the host, "
    "or take it off direct:.",
    "timeout": "The server did not finish the handshake in time (handshake_timeout): "
    "check the network path to it.",
    "connect_failed": "No TCP connection to the server: check server: in agent.yaml and "
    "that the server runs.",
    "upstream_proxy": "The corporate proxy refused or failed the tunnel: check "
    "upstream_proxy: and its credentials.",
    "tls_error": "TLS with the server failed: check that agent and server certificates "
    "come from the same CA (docs/certificates.md).",
    "certificate_refused": "The server refuses this agent's certificate: issue a new one "
    "with fluidity pki issue-client.",
}


class DashboardRefused(FluidityError):
    """A dashboard request that must not be served: ``status`` and a plain reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    """A dashboard response, for whichever listener serves it."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def page() -> Answer:
    """The page itself (read once per process from the package)."""
    return Answer(200, HTML_TYPE, _page_bytes(), PAGE_HEADERS)


_PAGE: list[bytes] = []


def _page_bytes() -> bytes:
    if not _PAGE:
        _PAGE.append(resources.files("fluidity.observe").joinpath("dashboard.html").read_bytes())
    return _PAGE[0]


def data(value: Mapping[str, Any]) -> Answer:
    """``value`` as the JSON the page polls."""
    body = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    return Answer(200, JSON_TYPE, body, DATA_HEADERS)


def refusal(exc: DashboardRefused) -> Answer:
    headers: tuple[tuple[str, str], ...] = DATA_HEADERS
    if exc.status == 401:
        headers = (*headers, ("WWW-Authenticate", 'Basic realm="fluidity"'))
    body = json.dumps({"error": str(exc)}).encode()
    return Answer(exc.status, JSON_TYPE, body, headers)


def check_host(headers: Sequence[tuple[str, str]]) -> None:
    """Refuse (421) a ``Host`` that is a name other than ``localhost``: DNS rebinding."""
    value = header(headers, "host")
    if value is None:
        raise DashboardRefused(400, "a dashboard request needs a Host header")
    try:
        host = urllib.parse.urlsplit(f"//{value.strip()}").hostname or ""
    except ValueError:
        host = ""
    if host == "localhost" or _is_ip(host):
        return
    raise DashboardRefused(
        421,
        f"the dashboard answers only to an IP address or localhost, not {value!r}: "
        "open it as http://127.0.0.1:<port>/",
    )


def check_action(method: str, headers: Sequence[tuple[str, str]]) -> None:
    """Refuse an action that is not a POST from the page itself (see the module doc)."""
    if method != "POST":
        raise DashboardRefused(405, "an action is a POST: press the button on the page")
    site = header(headers, "sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise DashboardRefused(403, f"refused a cross-site action (Sec-Fetch-Site: {site})")
    origin = header(headers, "origin")
    if origin is not None and origin != f"http://{header(headers, 'host')}":
        raise DashboardRefused(403, f"refused an action from another origin ({origin})")
    if header(headers, ACTION_HEADER) is None:
        raise DashboardRefused(
            403, f"an action needs the {ACTION_HEADER} header, as the page's buttons send"
        )


def check_credentials(
    headers: Sequence[tuple[str, str]],
    credentials: tuple[str, str] | None,
    *,
    proxy_authenticated: bool,
) -> None:
    """With ``credentials``, require them (proxy or plain Basic authentication): 401."""
    if credentials is None or proxy_authenticated:
        return
    if basic_matches(header(headers, "authorization"), credentials):
        return
    raise DashboardRefused(401, "the dashboard needs the proxy's user name and password")


def basic_matches(value: str | None, credentials: tuple[str, str]) -> bool:
    """True if ``value`` is ``Basic`` with exactly ``credentials`` (compared in constant time)."""
    if value is None:
        return False
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, ":".join(credentials).encode())


def header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (any case), or None."""
    wanted = name.lower()
    return next((value for key, value in headers if key.lower() == wanted), None)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
