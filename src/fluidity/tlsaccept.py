"""Accepting TLS connections so that a failed handshake is seen, with its reason.

``loop.create_server(ssl=...)`` hides failed handshakes: the protocol is
never told, and asyncio logs them only in debug mode. The server needs them
(an operator wants to know that a revoked agent keeps knocking, and metrics
count them by reason), so it listens on plain TCP and upgrades each
connection itself with ``loop.start_tls``, which raises the handshake's
error where we can catch it.

One subtlety shapes ``TLSAcceptor``: ``start_tls`` does not call the new
protocol's ``connection_made``, and the TLS layer delivers the application
bytes that arrived with the client's last handshake flight (an HTTP/2 client
sends its preface at once) before the awaiting coroutine resumes. So the
acceptor is itself the protocol ``start_tls`` talks to: it holds what arrives
until the real protocol is connected, then hands over the transport, the
held bytes and any end of stream, in order.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import cast

from fluidity.tls import handshake_failure_reason

# Called once the handshake is done: the protocol that takes the connection over.
ProtocolFactory = Callable[[], asyncio.Protocol]
# Called when it fails: the peer ("host:port"), a reason label and the error.
FailureCallback = Callable[[str, str, BaseException], None]


class TLSAcceptor(asyncio.Protocol):
    """The protocol of one accepted TCP connection until its TLS handshake is done."""

    def __init__(
        self,
        context: ssl.SSLContext,
        timeout: float,
        factory: ProtocolFactory,
        on_failure: FailureCallback,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self._context = context
        self._timeout = timeout
        self._factory = factory
        self._on_failure = on_failure
        self._tasks = tasks
        self._tcp: asyncio.Transport | None = None
        self._hello: bytearray | None = bytearray()  # None once start_tls has taken over
        self._held = bytearray()
        self._eof = False
        self._gone = False  # connection_lost was called

    # -- as the TCP connection's protocol, before the handshake ----------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        self._tcp = tcp
        tcp.pause_reading()  # the ClientHello is for start_tls (asyncio honours this; uvloop not)
        task = asyncio.get_running_loop().create_task(self._handshake(tcp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A shutdown may cancel the handshake before it ever ran: the connection
        # is then nobody's, so close it here.
        task.add_done_callback(lambda done: tcp.abort() if done.cancelled() else None)

    async def _handshake(self, tcp: asyncio.Transport) -> None:
        peer = _peer(tcp)
        loop = asyncio.get_running_loop()
        if self._gone or tcp.is_closing():
            self._on_failure(peer, "connection_lost", ConnectionResetError("closed before TLS"))
            return
        upgrade = loop.create_task(
            loop.start_tls(
                tcp, self, self._context, server_side=True, ssl_handshake_timeout=self._timeout + 5
            )
        )
        loop.call_soon(self._replay_hello, tcp)  # right after start_tls installs its protocol
        try:
            # Our own deadline comes first, so a slow handshake is a TimeoutError here.
            async with asyncio.timeout(self._timeout):
                tls = await upgrade
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            self._on_failure(peer, handshake_failure_reason(exc), exc)
            tcp.abort()
            return
        if tls is None or self._gone:
            return  # gone right after the handshake: nothing to serve
        self._hand_over(tls)

    def _hand_over(self, tls: asyncio.Transport) -> None:
        app = self._factory()
        tls.set_protocol(app)
        app.connection_made(tls)
        if self._held:
            held, self._held = bytes(self._held), bytearray()
            app.data_received(held)
        if self._eof and not app.eof_received():
            tls.close()

    def _replay_hello(self, tcp: asyncio.Transport) -> None:
        hello, self._hello = bytes(self._hello or b""), None
        protocol = tcp.get_protocol()
        if hello and protocol is not self:
            _feed(protocol, hello)

    # -- data: the ClientHello before start_tls, then application bytes until the hand-over

    def data_received(self, data: bytes) -> None:
        if self._hello is not None:
            self._hello += data
            if self._tcp is not None:
                self._tcp.pause_reading()  # one read is all a ClientHello needs
        else:
            self._held += data  # at most what came with the last handshake flight

    def eof_received(self) -> bool:
        if self._hello is not None:
            return False  # gone before TLS began: close
        self._eof = True
        return True  # the real protocol decides, once connected

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver ``data`` to ``protocol`` as its transport would (buffered or not)."""
    if not hasattr(protocol, "get_buffer"):
        cast(asyncio.Protocol, protocol).data_received(data)
        return
    buffered = cast(asyncio.BufferedProtocol, protocol)  # uvloop's TLS protocol is no subclass
    view = memoryview(data)
    while view:
        buffer = memoryview(buffered.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        buffered.buffer_updated(size)
        view = view[size:]


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if not peer:
        return "unknown peer"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
