"""The WebSocket transport's asyncio layer: one outer connection carrying one tunnel.

Outside in, the layers of a WebSocket transport connection are::

    TCP                    direct, or a CONNECT through the corporate proxy
    outer TLS              asyncio's; a TLS-inspecting proxy may end and re-encrypt it
                           (absent on a load balancer's plain listener)
    HTTP/1.1 WebSocket     WebSocketChannel: sans-I/O, the websockets library
    inner TLS 1.3 (mTLS)   MemoryTLS: sans-I/O, ssl.MemoryBIO, the direct transport's contexts
    HTTP/2                 TunnelConnection, unchanged, on an InnerTransport

``WebSocketLink`` is the ``asyncio.Protocol`` of the outer connection, and the
one place that reads it: bytes go up through the channel and the inner TLS,
plaintext goes to the tunnel protocol. ``InnerTransport`` (``innertransport``)
is the transport the tunnel protocol writes to: plaintext goes down through
the inner TLS and the channel to the outer connection, in the same call. So
there are no tasks and no queues here, and backpressure is the outer
transport's: its ``pause_writing``/``resume_writing`` pass straight to the
tunnel protocol.

The agent side pings under the tunnel's HTTP/2 PINGs: a WebSocket ping every
``ping_interval`` is traffic an idle-timeout-minded proxy or load balancer can
see (the PINGs are opaque binary messages to it), and a pong that does not come
within ``ping_timeout`` ends the connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

from websockets.frames import CloseCode

from fluidity.errors import HandshakeError, TunnelClosed, TunnelError, WebSocketRefused
from fluidity.protocol.tunnel import Side
from fluidity.protocol.wschannel import (
    BytesReceived,
    ChannelClosed,
    ChannelEvent,
    ChannelOpened,
    ChannelRefused,
    PongReceived,
    WebSocketChannel,
)
from fluidity.transport import readbuffer
from fluidity.transport.innertransport import InnerTransport, deliver
from fluidity.transport.memtls import MemoryTLS

log = logging.getLogger(__name__)

TRANSPORT_NAME = "websocket"


class WebSocketLink(asyncio.BufferedProtocol):
    """Drives one WebSocket transport connection; ``opened`` resolves to the tunnel
    protocol once the inner TLS handshake is done and the protocol is attached.

    A buffered protocol: the outer transport reads into one buffer the link owns
    (with ``data_received`` alone, uvloop's TLS layer allocates a fresh 256 KiB
    object for every read, and bulk transfers pay for it)."""

    def __init__(
        self,
        side: Side,
        channel: WebSocketChannel,
        inner_context: ssl.SSLContext,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        server_hostname: str | None = None,
        peer: str = "peer",
        ping_interval: float = 0.0,
        ping_timeout: float = 10.0,
        handshake_timeout: float | None = None,
        on_failure: Callable[[str, TunnelError], None] | None = None,
    ) -> None:
        self.side = side
        self.peer = peer
        self._channel = channel
        self._inner_context = inner_context
        self._factory = protocol_factory
        self._server_hostname = server_hostname
        self._ping = (ping_interval, ping_timeout)
        self._handshake_timeout = handshake_timeout
        self._on_failure = on_failure
        self._loop = asyncio.get_running_loop()
        self._outer: asyncio.Transport | None = None
        self._tls: MemoryTLS | None = None
        self._protocol: asyncio.BaseProtocol | None = None
        self._inner: InnerTransport | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._failure: TunnelError | None = None
        self._lost = False
        self.request_headers: tuple[tuple[str, str], ...] = ()
        self.pongs_received = 0
        self._read_view: memoryview | None = None  # lent from readbuffer during a read
        self.opened: asyncio.Future[asyncio.BaseProtocol] = self._loop.create_future()
        self.opened.add_done_callback(_retrieve)

    # -- asyncio.BufferedProtocol (the outer connection) --------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._outer = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        if self.side is Side.SERVER and peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        if self._handshake_timeout is not None:
            self._timers["handshake"] = self._loop.call_later(
                self._handshake_timeout, self._on_handshake_timeout
            )
        self._flush()  # the agent's upgrade request

    def get_buffer(self, sizehint: int) -> memoryview:
        self._read_view = view = readbuffer.lend()
        return view

    def buffer_updated(self, nbytes: int) -> None:
        view, self._read_view = self._read_view, None
        assert view is not None, "buffer_updated without get_buffer"
        data = bytes(view[:nbytes])
        readbuffer.give_back(view)  # free before the bytes are handed on
        self.data_received(data)

    def data_received(self, data: bytes) -> None:
        """Bytes from the outer connection (``buffer_updated`` passes them on)."""
        try:
            for event in self._channel.receive_data(data):
                self._dispatch(event)
        except TunnelError as exc:
            self._fail(exc)
        self._flush()

    def eof_received(self) -> bool:
        for event in self._channel.receive_eof():
            self._dispatch(event)
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        for timer in self._timers.values():
            timer.cancel()
        failure: Exception | None = self._failure or exc
        if not self.opened.done():
            self.opened.set_exception(
                failure
                if isinstance(failure, TunnelError)
                else HandshakeError(f"{self.peer} closed the connection during the handshake")
            )
        if self._protocol is not None:
            protocol, self._protocol = self._protocol, None
            protocol.connection_lost(failure)

    def pause_writing(self) -> None:
        if self._protocol is not None:
            self._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self._protocol is not None:
            self._protocol.resume_writing()

    # -- called by InnerTransport -------------------------------------------

    def send_plaintext(self, data: bytes) -> None:
        """Encrypt and send ``data`` from the tunnel protocol."""
        if self._tls is None or self.is_closing():
            return
        try:
            self._tls.send(data)
        except TunnelError as exc:
            self._fail(exc)
        self._flush()

    def close(self) -> None:
        """close_notify, a WebSocket close, then the outer connection, in that order."""
        if self._tls is not None:
            self._tls.close()
        self._flush()
        self._channel.close()
        self._flush()
        if self._outer is not None:
            self._outer.close()

    def abort(self) -> None:
        if self._outer is not None:
            self._outer.abort()

    def is_closing(self) -> bool:
        return self._lost or self._outer is None or self._outer.is_closing()

    def inner_extra(self, name: str, default: Any) -> Any:
        """The inner TLS's ``peercert``/``ssl_object``/``cipher``, else the outer transport's."""
        if self._tls is not None:
            match name:
                case "peercert":
                    return self._tls.getpeercert()
                case "ssl_object":
                    return self._tls.ssl_object
                case "cipher":
                    return self._tls.ssl_object.cipher()
        if name == "fluidity_transport":
            return TRANSPORT_NAME
        if name == "forwarded_for":
            return _header(self.request_headers, "x-forwarded-for") or default
        return self._outer.get_extra_info(name, default) if self._outer else default

    @property
    def outer(self) -> asyncio.Transport | None:
        return self._outer

    # -- internals ------------------------------------------------------------

    def _dispatch(self, event: ChannelEvent) -> None:
        match event:
            case ChannelOpened(headers):
                self.request_headers = headers
                self._start_tls()
            case ChannelRefused(status, reason):
                answer = f"{status} {reason}" if status else reason
                self._fail(
                    WebSocketRefused(
                        f"{self.peer} answered the WebSocket upgrade: {answer}", status
                    )
                    if self.side is Side.AGENT
                    else WebSocketRefused(f"refused a WebSocket request: {answer}", status)
                )
            case BytesReceived(data):
                self._receive_ciphertext(data)
            case PongReceived():
                self.pongs_received += 1
                timer = self._timers.pop("pong", None)
                if timer is not None:
                    timer.cancel()
            case ChannelClosed(code, reason):
                if code == CloseCode.NORMAL_CLOSURE and self._protocol is not None:
                    self._finish()
                    return
                why = f"{self.peer} closed the WebSocket ({code}{': ' if reason else ''}{reason})"
                self._fail(TunnelClosed(why))

    def _start_tls(self) -> None:
        self._tls = MemoryTLS(
            self._inner_context,
            server_side=self.side is Side.SERVER,
            server_hostname=self._server_hostname,
            peer=self.peer,
        )
        self._tls.start()

    def _receive_ciphertext(self, data: bytes) -> None:
        if self._tls is None:
            return
        plaintext = self._tls.receive(data)
        if self._tls.handshake_complete and self._inner is None:
            self._attach()
        if plaintext and self._protocol is not None:
            deliver(self._protocol, plaintext)
        if self._tls.peer_closed:
            self._finish()

    def _attach(self) -> None:
        timer = self._timers.pop("handshake", None)
        if timer is not None:
            timer.cancel()
        self._inner = InnerTransport(self)
        self._protocol = self._factory()
        self._protocol.connection_made(self._inner)
        if not self.opened.done():
            self.opened.set_result(self._protocol)
        self._schedule_ping()

    def _flush(self) -> None:
        if self._tls is not None and self._channel.is_open:
            ciphertext = self._tls.ciphertext_to_send()
            if ciphertext:
                self._channel.send_bytes(ciphertext)
        data = self._channel.data_to_send()
        outer = self._outer
        if outer is None or outer.is_closing():
            return
        if data:
            outer.write(data)
        if self._channel.wants_eof:
            outer.close()

    def _finish(self) -> None:
        """The peer ended the tunnel cleanly (close_notify, WebSocket close 1000): close too."""
        self._flush()
        self._channel.close()
        self._flush()
        if self._outer is not None:
            self._outer.close()

    def _fail(self, exc: TunnelError) -> None:
        """Send what is queued (an alert, a refusal, a close), then close the connection."""
        if self._failure is None:
            self._failure = exc
            if self.side is Side.SERVER and self._protocol is None:
                self._report(exc)
        if not self.opened.done():
            self.opened.set_exception(exc)
        self._flush()  # a TLS alert goes out before the WebSocket closes
        self._channel.close(CloseCode.INTERNAL_ERROR)
        self._flush()
        if self._outer is not None:
            self._outer.close()

    def _report(self, exc: TunnelError) -> None:
        """Server side, before a tunnel exists: a refused upgrade is logged, a failed
        inner handshake goes to ``on_failure`` (logged and counted by the server)."""
        if isinstance(exc, WebSocketRefused) or self._on_failure is None:
            log.info("websocket transport from %s: %s", self.peer, exc)
        else:
            self._on_failure(self.peer, exc)

    def _on_handshake_timeout(self) -> None:
        self._timers.pop("handshake", None)
        self._fail(HandshakeError(f"no tunnel handshake from {self.peer} in time", "timeout"))
        self.abort()

    def _schedule_ping(self) -> None:
        interval, _ = self._ping
        if self.side is Side.AGENT and interval > 0 and not self._lost:
            self._timers["ping"] = self._loop.call_later(interval, self._send_ping)

    def _send_ping(self) -> None:
        _, timeout = self._ping
        if "pong" not in self._timers and self._channel.is_open:
            self._channel.ping(b"fluidity")
            self._flush()
            self._timers["pong"] = self._loop.call_later(timeout, self._on_pong_lost)
        self._schedule_ping()

    def _on_pong_lost(self) -> None:
        self._timers.pop("pong", None)
        _, timeout = self._ping
        log.warning(
            "no WebSocket pong from %s within %.1f s: the connection is dead", self.peer, timeout
        )
        self._failure = self._failure or TunnelClosed(
            f"keepalive timeout: {self.peer} did not answer a WebSocket ping"
        )
        self.abort()


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failure as seen: a server-side link's ``opened`` has no one awaiting it."""
    if not future.cancelled():
        future.exception()
