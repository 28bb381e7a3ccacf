"""A ``direct:`` route: the agent's own TCP connection to a target, held like a tunnel stream.

Hosts on the agent.yaml ``direct:`` list (the intranet) are not carried by the
tunnel: the agent connects to them itself, straight or through the corporate proxy
when ``upstream_proxy:`` is set (the path is :func:`fluidity.agent.path.open_path`).
:class:`DirectStream` is that connection as a
:class:`~fluidity.transport.socketstream.SocketStream`: the interface of a tunnel
stream, with the same backpressure (:data:`WINDOW`), so a client connection drives
both alike.
"""

from __future__ import annotations

from fluidity.agent.path import attach, open_path
from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.transport.socketstream import WINDOW, SocketStream
from fluidity.transport.streams import StreamHandler

__all__ = ["WINDOW", "DirectStream"]


class DirectStream(SocketStream):
    """One direct TCP connection reporting to ``handler`` (see ``SocketStream``)."""

    describe = "direct connection"

    @classmethod
    async def open(
        cls,
        upstream: UpstreamProxyConfig | None,
        host: str,
        port: int,
        handler: StreamHandler,
        *,
        timeout: float,  # noqa: ASYNC109 -- passed on to open_path, which also bounds PAC
    ) -> DirectStream:
        """Connect to ``host:port`` (through the proxy when ``upstream`` says so).

        Raises :class:`~fluidity.errors.PathError` or
        :class:`~fluidity.errors.UpstreamProxyError`.
        """
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        stream = cls(authority, handler)
        await attach(await open_path(upstream, host, port, timeout=timeout), stream)
        return stream
