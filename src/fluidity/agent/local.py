"""What the agent answers by itself, and who may ask it.

The agent's own answers need no tunnel: the refusal at its connection limit
(``Refuser``), the start line's description of its routes, the Host-header name
the PAC file points browsers at, and the rule that a listener reachable from
other machines needs proxy credentials (``proxy_credentials``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import urllib.parse
from typing import cast

from fluidity.config.agent import AgentConfig
from fluidity.errors import ConfigError
from fluidity.observe.metricsserver import MetricsServer
from fluidity.protocol.proxyevents import LocalRequest
from fluidity.protocol.proxyroute import mask_url


class Refuser(asyncio.Protocol):
    """Answers 503 and closes: the agent is at its connection limit."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        body = b"fluidity agent: too many client connections (max_client_connections)\n"
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        transport.close()


def describe_routes(config: AgentConfig) -> str:
    """For the start line: the corporate proxy (password masked) and the direct: list."""
    parts = []
    if config.upstream_proxy is not None:
        parts.append(f" via upstream proxy {mask_url(config.upstream_proxy.url)}")
    if config.direct:
        parts.append(f"; direct: {', '.join(config.direct)}")
    return "".join(parts)


def host_header_name(request: LocalRequest) -> str | None:
    """The host name in the request's Host header, if it is a plain name or address."""
    for name, value in request.headers:
        if name.lower() == "host":
            try:
                host = urllib.parse.urlsplit(f"//{value.strip()}").hostname
            except ValueError:
                return None
            if host and all(c.isalnum() or c in ".-:" for c in host):
                return host
    return None


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop``, or ``asyncio`` with the loop class (``SelectorEventLoop``...)."""
    module = type(loop).__module__.split(".")[0]
    return "uvloop" if module == "uvloop" else f"asyncio ({type(loop).__name__})"


def metrics_url(server: MetricsServer | None) -> str | None:
    if server is None or server.address is None:
        return None
    return f"http://{server.address[0]}:{server.address[1]}/metrics"


def proxy_credentials(config: AgentConfig) -> tuple[str, str] | None:
    """Proxy credentials; required when the listener is reachable from other machines."""
    if config.auth is not None:
        return config.auth.username, config.auth.resolve_password()
    if not is_loopback(config.listen.host):
        raise ConfigError(
            f"listen: {config.listen} is reachable from other machines, so the proxy needs "
            "credentials: set auth: {username: ..., password_env: ...} in agent.yaml, "
            "or listen on 127.0.0.1"
        )
    return None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
