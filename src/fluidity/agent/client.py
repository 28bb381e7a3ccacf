"""One local client connection of the agent: the proxy driver with the agent's upstreams.

``ClientConnection`` is the asyncio protocol of a socket accepted on the
agent's port. The driving itself (the sans-I/O session, backpressure, the head
timeout, holding what an opening upstream says) is the shared
:class:`~fluidity.transport.proxydriver.ProxyDriver`; this class adds what is
the agent's own: an upstream is a tunnel stream, or, for a host on the
``direct:`` list, a ``DirectStream`` (the agent's own connection, with the
same interface), and the agent's failures answer:

- 503: no tunnel within ``connect_wait``, or the server's stream limit;
- the server's status for a refused stream (403, 502, 503, 504);
- 502: any other tunnel or stream failure; a direct path's own status.

A tunnel stream that breaks before a response byte answers 502, except that
an idempotent request sent in full is replayed once on the next tunnel when
the whole tunnel died (the driver asks ``tunnel_alive``).
"""

from __future__ import annotations

from typing import Protocol

from fluidity.agent.keeper import TunnelKeeper
from fluidity.agent.pool import TunnelPool
from fluidity.config.agent import AgentConfig
from fluidity.errors import (
    FluidityError,
    PathError,
    StreamError,
    StreamRefused,
    TooManyStreams,
    TunnelError,
    TunnelUnavailable,
)
from fluidity.observe.metrics import Metrics, target_error_kind
from fluidity.protocol.dispatch import DriverSession
from fluidity.protocol.routing import SplitRouting
from fluidity.transport.proxydriver import ProxyDriver, Refusal, Upstream
from fluidity.transport.streams import StreamHandler

__all__ = ["ClientConnection", "ClientHost", "Upstream"]


class ClientHost(Protocol):
    """What a client connection needs of the agent that accepted it."""

    config: AgentConfig
    keeper: TunnelKeeper
    tunnels: TunnelPool
    metrics: Metrics
    routing: SplitRouting
    keepalive_clients: bool

    def forget(self, client: ClientConnection) -> None: ...

    async def open_direct(self, host: str, port: int, handler: StreamHandler) -> Upstream: ...


class ClientConnection(ProxyDriver):
    """Drives a session between a local socket and its tunnel or direct upstreams."""

    def __init__(self, agent: ClientHost, session: DriverSession) -> None:
        super().__init__(
            session,
            agent.metrics,
            head_timeout=agent.config.head_timeout,
            keepalive=agent.keepalive_clients,
        )
        self.agent = agent

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.agent.forget(self)

    async def _connect(self, host: str, port: int) -> Upstream:
        """A tunnel stream to ``host:port``, or a direct connection if it is on ``direct:``."""
        if self.agent.routing.route(host) == "direct":
            self.kind = "direct"
            return await self.agent.open_direct(host, port, self)
        return await self.agent.tunnels.open_stream(self.target, self)

    def _refusal(self, exc: FluidityError) -> Refusal | None:
        match exc:
            case StreamRefused():
                return Refusal(exc.status, exc.reason, target_error_kind(exc.status))
            case TunnelUnavailable():
                return Refusal(503, str(exc), "no_tunnel")
            case TooManyStreams():
                return Refusal(503, str(exc), "stream_limit")
            case PathError():
                return Refusal(exc.status, str(exc), "direct_path")
            case StreamError() | TunnelError():
                return Refusal(502, str(exc), "tunnel_error")
        return None
