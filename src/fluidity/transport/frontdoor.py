"""The server's front door: the TLS contexts of its listeners, and which transport
each new connection speaks.

One port serves both transports. The main listener's TLS context offers ALPN
``h2`` and ``http/1.1`` and asks for (but does not demand) a client certificate;
``Handoff`` looks at the outcome of each handshake and hands the connection on:

* ``h2``: the direct transport. It must be TLS 1.3 with a client certificate
  the CA verified (and the CRL did not revoke), exactly as before; otherwise
  the connection is closed and the reason logged.
* ``http/1.1`` or no ALPN (what a proxy or browser offers): the WebSocket
  transport, whose inner TLS 1.3 handshake demands and verifies the client
  certificate with the unchanged ``server_context``. So no path into the
  tunnel skips client authentication.
* with ``https_proxy`` on, ``http/1.1`` or no ALPN may also be a client using the
  server as an HTTPS proxy (``fluidity.server.httpsproxy``, which checks its
  certificate or credentials); when the WebSocket transport is on too, the
  first request line tells the two apart (``fluidity.transport.proxydoor``).

Why ALPN and not an SNI callback: the agent's two transports reach the same
name, and ALPN is what already differs. A *public* certificate for the
WebSocket transport is the exception: the certificate is picked before ALPN is
known, so it is picked by name (SNI), and must carry names of its own -- or
it gets its own listener (``websocket.listen``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from fluidity.config.server import ServerConfig
from fluidity.config.values import FileOrPem
from fluidity.errors import ConfigError, HandshakeError, TunnelError
from fluidity.protocol.tunnel import Side
from fluidity.protocol.wschannel import WebSocketChannel
from fluidity.transport.innertransport import deliver
from fluidity.transport.proxydoor import FirstRequest
from fluidity.transport.tls import (
    ALPN,
    certificate_names,
    listener_context,
    name_matches,
    present_by_name,
    server_context,
    websocket_context,
)
from fluidity.transport.wslink import WebSocketLink


@dataclass(frozen=True)
class ServerContexts:
    """``main``: the main listener's; ``inner``: the tunnel's own (inside a WebSocket);
    ``websocket``: the ``websocket.listen`` listener's (None: plain HTTP there)."""

    main: ssl.SSLContext
    inner: ssl.SSLContext
    websocket: ssl.SSLContext | None


def server_contexts(config: ServerConfig) -> ServerContexts:
    """Build the contexts for ``config``; ``ConfigError`` if a public certificate meant
    for the main port shares a name with ``tls.cert``."""
    tls, ws, proxy = config.tls, config.websocket, config.https_proxy
    main = listener_context(
        tls.ca, tls.cert, tls.key, tls.crl, websocket=ws.enabled, https_proxy=proxy.enabled
    )
    inner = server_context(tls.ca, tls.cert, tls.key, tls.crl)
    public = websocket_context(ws.cert, ws.key) if ws.cert and ws.key else None
    if public is not None and ws.cert is not None and ws.listen is None and ws.enabled:
        present_by_name(main, public, _own_names(ws.cert, tls.cert))
    return ServerContexts(main, inner, public)


def _own_names(public_cert: FileOrPem, private_cert: FileOrPem) -> frozenset[str]:
    """The public certificate's names, checked to select it alone."""
    public = certificate_names(public_cert)
    private = certificate_names(private_cert)
    shared = sorted(n for n in private if any(name_matches(p, n) for p in public))
    if not public or shared:
        why = f"carries {', '.join(shared)} like tls.cert" if shared else "carries no DNS name"
        raise ConfigError(
            f"websocket.cert {why}: on the main port the server picks the certificate by "
            "the name the client asks for (SNI), so give the public certificate names of "
            "its own, or serve it on its own port with websocket.listen"
        )
    return public


def direct_problem(transport: asyncio.BaseTransport) -> HandshakeError | None:
    """Why a connection that chose ``h2`` may not use the direct transport, or None;
    its ``reason`` is the label a failed handshake would have had."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return HandshakeError("no TLS", "not_tls")
    if ssl_object.version() != "TLSv1.3":
        why = f"{ssl_object.version()} with h2: the direct transport requires TLS 1.3"
        return HandshakeError(why, "protocol_version")
    if not ssl_object.getpeercert():
        why = "the client sent no certificate: the direct transport requires one"
        return HandshakeError(why, "certificate_missing")
    return None


# Told of a connection refused after its handshake: the peer, and why.
RefusalCallback = Callable[[str, HandshakeError], None]


class Handoff(asyncio.Protocol):
    """The main listener's protocol once TLS is up: hands each connection to the direct
    transport (a tunnel connection) by ALPN ``h2``, else to the WebSocket transport (a
    link) or the HTTPS proxy (``make_proxy``, when on), by its first request line
    when both are on (``fluidity.transport.proxydoor``).

    Whatever reaches the hand-off itself (bytes the TLS acceptor held back and
    replays, an end of stream) goes on to the protocol it chose.
    """

    def __init__(
        self,
        make_connection: Callable[[], asyncio.BaseProtocol],
        make_link: Callable[[], WebSocketLink] | None,
        on_refused: RefusalCallback,
        make_proxy: Callable[[], asyncio.BaseProtocol] | None = None,
        sniff_timeout: float = 10.0,
    ) -> None:
        self._make_connection = make_connection
        self._make_link = make_link
        self._make_proxy = make_proxy
        self._sniff_timeout = sniff_timeout
        self._on_refused = on_refused
        self._target: asyncio.BaseProtocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._target = self._choose(transport)
        if self._target is None:
            cast(asyncio.Transport, transport).abort()  # uvloop's are not subclasses
            return
        transport.set_protocol(self._target)
        self._target.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._target is not None:
            deliver(self._target, data)

    def eof_received(self) -> bool:
        target = self._target
        if isinstance(target, asyncio.Protocol | asyncio.BufferedProtocol):
            return bool(target.eof_received())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # after the hand-off the transport reports to the target itself

    def _choose(self, transport: asyncio.BaseTransport) -> asyncio.BaseProtocol | None:
        link, proxy = self._make_link, self._make_proxy
        if link is None and proxy is None:  # only the direct transport, as always
            return self._make_connection()
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN:
            if link is not None and proxy is not None:
                return FirstRequest(link, proxy, self._sniff_timeout)
            chosen = link if link is not None else proxy
            assert chosen is not None, "checked above: not both None"
            return chosen()
        problem = direct_problem(transport)
        if problem is not None:
            self._on_refused(_peer(transport), problem)
            return None
        return self._make_connection()


def make_link(
    config: ServerConfig,
    inner: ssl.SSLContext,
    factory: Callable[[], asyncio.BaseProtocol],
    on_failure: Callable[[str, TunnelError], None] | None = None,
) -> WebSocketLink:
    """A server-side WebSocket link whose tunnel protocol comes from ``factory``."""
    return WebSocketLink(
        Side.SERVER,
        WebSocketChannel.server(path=config.websocket.path),
        inner,
        factory,
        handshake_timeout=config.limits.handshake_timeout,
        on_failure=on_failure,
    )


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if not peer:
        return "unknown peer"
    return f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
