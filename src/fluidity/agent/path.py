"""The agent's way out: a TCP path to a host, then a protocol on it, in the clear or in TLS.

Every outbound connection of the agent starts with :func:`open_path`: the tunnel to
the server (the keeper), a ``direct:`` route to an intranet host, and any other
transport that must reach the server the way the network allows. With an
``upstream_proxy:`` it goes through the corporate proxy (HTTP ``CONNECT``, see
:mod:`fluidity.agent.upstream`), else straight to the host.

The path comes back as an asyncio stream pair, because the proxy's answer is read
with a ``StreamReader``. The agent's connections are protocols (callbacks, no task
per connection), so :func:`attach` and :func:`attach_tls` then hand the connection
over to one: the transport's protocol is replaced, and whatever the old owner had
already received is replayed to the new one first, in order, so not a byte nor an
end of stream is lost in the switch.

Errors are :class:`~fluidity.errors.PathError` (its ``status`` is 504 for a timeout,
else 502), :class:`~fluidity.errors.UpstreamProxyError` when the proxy refused.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast

from fluidity.agent.upstream import (
    PathWriter,
    describe_os_error,
    open_connection,
    open_tunnel,
)
from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.errors import ConfigError, PathError, UpstreamProxyError

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

__all__ = ["Streams", "attach", "attach_tls", "open_path"]


async def open_path(
    upstream: UpstreamProxyConfig | None,
    host: str,
    port: int,
    *,
    timeout: float,  # noqa: ASYNC109 -- it also bounds the PAC fetch in a worker thread
) -> Streams:
    """A TCP connection to ``host:port``, through the corporate proxy when ``upstream``
    says so (PAC and ``env`` modes decide afresh on every call).

    The whole attempt (PAC, DNS, connects, every 407 leg) is bounded by ``timeout``
    seconds. Raises :class:`PathError` or :class:`UpstreamProxyError`; never leaves a
    connection open when it raises.
    """
    if upstream is not None:
        try:
            return await open_tunnel(upstream, host, port, timeout=timeout)
        except ConfigError as exc:
            # A password_env that vanished or a malformed HTTPS_PROXY: the agent keeps
            # running and retrying, so this is a failed path, named as the config key.
            raise UpstreamProxyError(str(exc)) from None
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            return await open_connection(host, port)
    except TimeoutError:
        raise PathError(f"connecting to {where} timed out after {timeout:g} s", 504) from None
    except OSError as exc:
        raise PathError(f"cannot connect to {where}: {describe_os_error(exc)}") from None


async def attach(streams: Streams, protocol: asyncio.Protocol) -> asyncio.Transport:
    """Make ``protocol`` the owner of the connection of ``streams``; return its transport.

    ``protocol`` hears ``connection_made``, then the bytes the reader had already
    buffered (a host that speaks first may have sent some along with the proxy's
    CONNECT answer), then everything after, including an end of stream the reader
    had already seen. The stream pair must not be used afterwards. Raises
    :class:`PathError` (and aborts the transport) if the connection was already lost.
    """
    reader, writer = streams
    transport = cast(asyncio.Transport, writer.transport)  # a socket transport reads, too
    if transport.is_closing() or reader.exception() is not None:
        transport.abort()
        raise PathError("the connection closed before it could be used")
    transport.pause_reading()
    _hand_over(writer)
    transport.set_protocol(protocol)
    # The reader gets nothing more: mark its end, and what it holds comes out at
    # once (read() does not suspend once the end is marked, so no callback of the
    # transport can run before the protocol has the early bytes).
    reader.feed_eof()
    early = await reader.read()
    transport.pause_reading()  # the reader may have resumed it while handing out bytes
    protocol.connection_made(transport)
    if early:
        protocol.data_received(early)
    # Resuming re-arms the socket: if the host had already closed its side, the
    # transport reads that end again and reports it to the new protocol.
    transport.resume_reading()
    return transport


async def attach_tls(
    streams: Streams,
    protocol: asyncio.Protocol | asyncio.BufferedProtocol,
    context: ssl.SSLContext,
    *,
    server_hostname: str,
    timeout: float,  # noqa: ASYNC109 -- the TLS handshake timeout, as asyncio names it
) -> asyncio.Transport:
    """Run a TLS client handshake on the connection of ``streams``, then hand the TLS
    transport to ``protocol``; return it.

    Nothing the host sent before the handshake is kept: a TLS client speaks first.
    Raises ``ssl.SSLError``, ``OSError`` (``ConnectionAbortedError`` when the handshake
    takes over ``timeout`` seconds) or ``asyncio.CancelledError``; the connection is
    closed whenever it raises.
    """
    _, writer = streams
    holding = _Holding()
    try:
        transport = await asyncio.get_running_loop().start_tls(
            writer.transport,
            holding,
            context,
            server_hostname=server_hostname,
            ssl_handshake_timeout=timeout,
        )
    except BaseException:
        writer.transport.abort()
        raise
    _hand_over(writer)
    if transport is None:  # only for a transport that cannot do TLS; ours always can
        writer.transport.abort()
        raise PathError("the connection could not start TLS")
    holding.hand_over(transport, protocol)
    return transport


def _hand_over(writer: asyncio.StreamWriter) -> None:
    """The writer no longer owns the connection: its garbage collection must not close it."""
    if isinstance(writer, PathWriter):
        writer.handed_over = True


class _Holding(asyncio.Protocol):
    """Keeps what the TLS transport reports between the end of the handshake and the
    moment the real protocol is attached (``start_tls`` starts reading at once)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._eof = False
        self._lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self._data += data

    def eof_received(self) -> bool:
        self._eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost.append(exc)

    def hand_over(
        self, transport: asyncio.Transport, protocol: asyncio.Protocol | asyncio.BufferedProtocol
    ) -> None:
        """Attach ``protocol`` and replay what was kept, in the order it came."""
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._data:
            _deliver(protocol, bytes(self._data))
        if self._eof:
            protocol.eof_received()
        for exc in self._lost:
            protocol.connection_lost(exc)


def _deliver(protocol: asyncio.Protocol | asyncio.BufferedProtocol, data: bytes) -> None:
    """Give ``data`` to ``protocol`` the way a transport would: ``data_received``, or
    through the buffers of a buffered protocol (the tunnel connection is one)."""
    if not isinstance(protocol, asyncio.BufferedProtocol):
        protocol.data_received(data)
        return
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        if size == 0:
            raise BufferError(f"{type(protocol).__name__}.get_buffer() returned no room")
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]
