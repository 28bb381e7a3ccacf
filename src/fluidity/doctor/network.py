"""The agent's way out: DNS for the server, and the corporate proxy.

The proxy check asks the proxy what the agent would, in two steps: a bare
``CONNECT`` (no credentials), whose answer says whether the proxy tunnels to the
server at all and which authentication schemes it offers (``Proxy-Authenticate``),
then the agent's own ``open_tunnel`` with the configured credentials, so a
refused password or an unsupported scheme shows here with the agent's message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os

import h11

from fluidity.agent.proxyauth import parse_challenges
from fluidity.agent.upstream import describe_os_error, open_connection, open_tunnel, resolve_route
from fluidity.config.agent import AgentConfig
from fluidity.doctor.report import Finding
from fluidity.errors import ConfigError, UpstreamProxyError
from fluidity.protocol.proxyroute import ProxyChoice, mask_url

MAX_HEAD = 64 * 1024


def uses_proxy(config: AgentConfig) -> bool:
    """Whether the agent may reach the server through a proxy (which resolves names)."""
    return config.upstream_proxy is not None


async def check_dns(config: AgentConfig, timeout: float) -> Finding:  # noqa: ASYNC109
    """The server's name resolves here; a warning only when a proxy may resolve it instead."""
    host, port = config.server.host, config.server.port
    if _is_ip(host):
        return Finding.ok("dns", f"the server is an IP address ({host}): no name to resolve")
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=0, proto=6)
    except (OSError, TimeoutError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else describe_os_error(exc)
        message = f"{host} does not resolve here: {why}"
        if uses_proxy(config):
            return Finding.warning(
                "dns", message, "none needed if the corporate proxy resolves it (see below)"
            )
        return Finding.problem(
            "dns", message, "check server: in agent.yaml, and this machine's DNS (or VPN)"
        )
    addresses = sorted({str(info[4][0]) for info in infos})
    return Finding.ok("dns", f"{host} resolves to {', '.join(addresses)}")


async def check_proxy(config: AgentConfig, timeout: float) -> list[Finding]:  # noqa: ASYNC109
    """Which way the agent takes to the server and, through a proxy, what it answers."""
    upstream = config.upstream_proxy
    env = os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")
    if upstream is None:
        if env:
            return [
                Finding.warning(
                    "proxy",
                    f"HTTPS_PROXY is set ({mask_url(env)}) but agent.yaml has no upstream_proxy: "
                    "the agent connects directly",
                    "add 'upstream_proxy: {url: env}' to agent.yaml if direct connections "
                    "out are blocked here",
                )
            ]
        return [Finding.ok("proxy", "no corporate proxy configured: the agent connects directly")]
    host, port = config.server.host, config.server.port
    try:
        choices, _ = await resolve_route(upstream, host, port, timeout=timeout)
    except (ConfigError, UpstreamProxyError) as exc:
        return [
            Finding.problem("proxy", str(exc), "correct upstream_proxy (or the PAC file) to match")
        ]
    shown = "; ".join(map(str, choices))
    findings = [
        Finding.ok(
            "proxy", f"upstream_proxy {mask_url(upstream.url)}: route to {host}:{port} is {shown}"
        )
    ]
    proxies = [choice for choice in choices if choice.kind == "http"]
    if proxies:
        findings.append(await _bare_connect(proxies[0], host, port, timeout))
    findings.append(await _through(config, timeout))
    return findings


async def _bare_connect(proxy: ProxyChoice, host: str, port: int, timeout: float) -> Finding:  # noqa: ASYNC109
    """A CONNECT without credentials: the proxy's status and offered auth schemes."""
    where = f"{proxy.host}:{proxy.port}"
    try:
        async with asyncio.timeout(timeout):
            response = await _connect_once(proxy, f"{host}:{port}")
    except (OSError, TimeoutError, h11.RemoteProtocolError, asyncio.IncompleteReadError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else _describe(exc)
        return Finding.problem(
            "proxy", f"proxy {where} did not answer CONNECT: {why}", "check upstream_proxy.url"
        )
    status = f"{response.status_code} {response.reason.decode('latin-1')}".strip()
    values = [v.decode("latin-1") for k, v in response.headers if k == b"proxy-authenticate"]
    schemes = sorted({challenge.scheme for challenge in parse_challenges(values)})
    offers = f", offering {', '.join(schemes)}" if schemes else ""
    said = f"proxy {where} answers {status} to CONNECT {host}:{port} without credentials{offers}"
    if response.status_code == 403:
        return Finding.problem(
            "proxy", said, f"ask the proxy's administrators to allow CONNECT to port {port}"
        )
    if response.status_code in (200, 407):
        return Finding.ok("proxy", said)
    return Finding.warning("proxy", said, "see the next line for what the agent gets")


async def _connect_once(proxy: ProxyChoice, target: str) -> h11.Response:
    reader, writer = await open_connection(proxy.host, proxy.port)
    try:
        http = h11.Connection(h11.CLIENT)
        request = h11.Request(method="CONNECT", target=target, headers=[("Host", target)])
        writer.write(http.send(request) + http.send(h11.EndOfMessage()))
        await writer.drain()
        http.receive_data(await reader.readuntil(b"\r\n\r\n"))
        event = http.next_event()
        if not isinstance(event, h11.Response):
            raise h11.RemoteProtocolError(f"expected a response head, got {event!r}")
        return event
    finally:
        writer.close()


async def _through(config: AgentConfig, timeout: float) -> Finding:  # noqa: ASYNC109
    """The agent's own way through the proxy, with its credentials."""
    assert config.upstream_proxy is not None
    host, port = config.server.host, config.server.port
    try:
        _, writer = await open_tunnel(config.upstream_proxy, host, port, timeout=timeout)
    except ConfigError as exc:
        return Finding.problem("proxy", str(exc), "set the variable, or correct upstream_proxy")
    except UpstreamProxyError as exc:
        return Finding.problem(
            "proxy", str(exc), "see the message; docs/corporate-proxy.md has the cases"
        )
    writer.close()
    user = config.upstream_proxy.username
    who = f" for {user}" if user else ""
    return Finding.ok("proxy", f"the proxy opens a tunnel to {host}:{port}{who}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    if isinstance(exc, asyncio.IncompleteReadError):
        return "it closed the connection without an answer"
    return str(exc)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
