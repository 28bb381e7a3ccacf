"""One attempt to connect the agent's tunnel to the server, start to first word.

:meth:`TunnelDialer.dial` opens the TCP path, runs TLS over it and waits for
the server to speak HTTP/2; it returns that connection or raises the
``TunnelError`` that names what failed. It holds no connection and keeps no
state between attempts: keeping the tunnel up, reconnecting and counting is
:class:`fluidity.agent.keeper.TunnelKeeper`'s job.

A connection counts as up only once the server has spoken HTTP/2 to us: with
TLS 1.3 the client finishes its handshake before the server has checked the
client certificate, so a refused certificate shows up as the connection
ending before the first byte. That case raises ``AuthenticationError``
naming our certificate.

The TCP path to the server comes from a connector (the agent passes
:func:`fluidity.agent.path.open_path` with its ``upstream_proxy:``), called
afresh for every attempt so a PAC file is evaluated again on each reconnect;
TLS then runs over that path, on the direct transport or inside a WebSocket
(``fluidity.agent.routes``). ``handshake_timeout`` bounds the whole of it: the
proxy's CONNECT exchange included.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from fluidity.agent.routes import (
    Connector,
    DirectRoute,
    Route,
    WebSocketRoute,
    WebSocketSettings,
)
from fluidity.config.values import WebSocketEndpoint
from fluidity.errors import (
    AuthenticationError,
    HandshakeError,
    PathError,
    TunnelClosed,
    TunnelError,
    UpstreamProxyError,
)
from fluidity.protocol.tunnel import Side
from fluidity.transport.connection import TunnelConnection

__all__ = ["TunnelDialer", "failure_reason"]


@dataclass(frozen=True, kw_only=True)
class TunnelDialer:
    """How to reach the server on ``port``; each :meth:`dial` is one attempt.

    The fields are :class:`~fluidity.agent.keeper.TunnelKeeper`'s settings of the same
    names, where their defaults live. ``websocket`` is required to dial over the
    WebSocket transport; ``cert_description`` names our client certificate in an
    authentication failure.
    """

    port: int
    server_name: str
    context: ssl.SSLContext
    cert_description: str
    connector: Connector
    keepalive_interval: float
    keepalive_timeout: float
    handshake_timeout: float
    stream_idle_timeout: float
    ca_pem: bytes
    websocket: WebSocketSettings | None

    async def dial(self, host: str, transport: str) -> TunnelConnection:
        """A connection to ``host`` on ``transport`` (``direct`` or ``websocket``) that
        the server has spoken HTTP/2 on.

        Raises HandshakeError (``timeout`` after ``handshake_timeout``, ``no_http2``),
        AuthenticationError (the server closed right after TLS), or the route's
        PathError, UpstreamProxyError or TLS failure. Cancelled, it closes what it opened.
        """
        address = f"{host}:{self.port}"
        route = self._route(host, transport)

        def factory() -> TunnelConnection:
            return TunnelConnection(
                Side.AGENT,
                keepalive_interval=self.keepalive_interval,
                keepalive_timeout=self.keepalive_timeout,
                stream_idle_timeout=self.stream_idle_timeout,
                peer_name=f"server {address}",
            )

        # The path, the TLS handshake(s) and the WebSocket upgrade share one budget;
        # each step bounds itself so its failure names what it waited for. The outer
        # timeout is a safety net.
        budget = self.handshake_timeout
        try:
            async with asyncio.timeout(budget + 0.5):
                conn = await route.open(factory, budget=budget)
        except TimeoutError as exc:
            raise HandshakeError(
                f"connecting to {address} ({route.name} transport) timed out after "
                f"{budget:g} s (handshake_timeout)",
                "timeout",
            ) from exc
        try:
            return await self._await_first_word(conn, address)
        except asyncio.CancelledError:
            conn.close_now("agent stopping")  # not the keeper's yet: its cleanup cannot see it
            raise

    def _route(self, host: str, transport: str) -> Route:
        """The way to the server at ``host`` on ``transport``."""
        if transport == "websocket":
            assert self.websocket is not None
            ws = self.websocket
            end = ws.url or WebSocketEndpoint(True, host, self.port, name=self.server_name)
            return WebSocketRoute(
                end,
                self.server_name,
                self.context,
                ws.outer_context,
                self.connector,
                ping_interval=ws.ping_interval,
                ping_timeout=self.keepalive_timeout,
            )
        return DirectRoute(
            host, self.port, self.server_name, self.context, self.ca_pem, self.connector
        )

    async def _await_first_word(self, conn: TunnelConnection, address: str) -> TunnelConnection:
        try:
            async with asyncio.timeout(self.handshake_timeout):
                await conn.ready
        except TunnelClosed as exc:
            raise AuthenticationError(
                f"authentication failed: the server {address} closed the connection "
                f"right after the TLS handshake, refusing our client certificate "
                f"{self.cert_description} (revoked, expired, not issued by its CA, "
                f"or not on its allow-list?): {exc}"
            ) from exc
        except TimeoutError as exc:
            conn.close_now("no HTTP/2 preface")
            raise HandshakeError(
                f"server {address} did not speak HTTP/2 in time", "no_http2"
            ) from exc
        return conn


def failure_reason(exc: TunnelError) -> str:
    """The metrics label of a failed connection attempt."""
    if isinstance(exc, HandshakeError):
        return exc.reason
    if isinstance(exc, UpstreamProxyError):
        return "upstream_proxy"
    if isinstance(exc, PathError):
        return "timeout" if exc.status == 504 else "connect_failed"
    return "tls_error"
