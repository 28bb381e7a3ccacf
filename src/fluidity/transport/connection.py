"""The asyncio driver of one tunnel connection.

``TunnelConnection`` is the ``asyncio.Protocol`` of the TLS transport between
agent and server. It is the one place that reads the connection: every chunk
goes into the sans-I/O ``TunnelProtocol``, the events that come out are
dispatched (those of a stream to its handler, through the ``StreamTable`` of
``fluidity.transport.streams``), and what the protocol has to send is written
back. There are no tasks per stream and no awaits per chunk: streams are
driven by callbacks, like transports and protocols.

Liveness, on both sides (the timers are ``fluidity.transport.liveness``'s):
after ``keepalive_interval`` seconds without a byte from the peer an HTTP/2
PING goes out, and a PING unanswered for ``keepalive_timeout`` seconds
declares the connection dead: every stream fails at once and the transport is
dropped. Optionally, a stream with no bytes either way for
``stream_idle_timeout`` seconds is reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

from h2.errors import ErrorCodes

from fluidity.errors import StreamRefused, TunnelClosed
from fluidity.protocol.events import (
    ConnectionTerminated,
    DataReceived,
    PingAcknowledged,
    SendBufferDrained,
    StreamAccepted,
    StreamEnded,
    StreamRejected,
    StreamRequested,
    StreamReset,
    TunnelEvent,
)
from fluidity.protocol.tunnel import Side, TunnelProtocol
from fluidity.transport import readbuffer
from fluidity.transport.liveness import Keepalive
from fluidity.transport.sockopts import set_tcp_keepalive
from fluidity.transport.streams import StreamHandler, StreamTable, TunnelStream

log = logging.getLogger(__name__)

# Seconds a closing program waits for the peer's TLS close_notify before it aborts
# the connection (``TunnelConnection.finish``): a loopback or LAN round trip takes
# milliseconds, one through a busy corporate proxy rarely more than a few hundred.
CLOSE_GRACE = 1.0

StreamRequestCallback = Callable[["TunnelConnection", int, str], None]


class TunnelConnection(asyncio.BufferedProtocol):
    """Drives one tunnel connection (agent or server side) over a TLS transport.

    A buffered protocol: the TLS layer decrypts straight into one buffer owned
    by the connection, which h2 copies from. With ``data_received`` alone,
    uvloop allocates a fresh 256 KiB ``bytes`` for every TLS read (an mmap,
    its page faults, a shrinking mremap, an munmap) and joins several of them
    with one more copy: measurable on every new tunnel and most of a bulk
    transfer's allocation cost.
    """

    def __init__(
        self,
        side: Side,
        *,
        keepalive_interval: float = 15.0,
        keepalive_timeout: float = 10.0,
        max_streams: int = 1000,
        stream_idle_timeout: float = 0.0,
        on_stream_request: StreamRequestCallback | None = None,
        peer_name: str = "peer",
    ) -> None:
        self.side = side
        self._core = TunnelProtocol(side, max_streams=max_streams)
        self._transport: asyncio.Transport | None = None
        self._on_stream_request = on_stream_request
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._streams = StreamTable(
            self._core,
            self._loop,
            idle_timeout=stream_idle_timeout,
            schedule_flush=self._schedule_flush,
            peer_name=peer_name,
        )
        self._keepalive = Keepalive(
            self._loop,
            keepalive_interval,
            keepalive_timeout,
            send_ping=self._send_ping,
            on_dead=self._on_keepalive_lost,
        )
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self.last_activity = time.time()
        self.goaway_received = False
        self.goaway: ConnectionTerminated | None = None  # the peer's GOAWAY, if it sent one
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self._read_view: memoryview | None = None  # lent from readbuffer during a read

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        set_tcp_keepalive(transport)
        self._core.initiate()
        self._flush()
        self._keepalive.start()
        self._streams.idle.start()

    def get_buffer(self, sizehint: int) -> memoryview:
        self._read_view = view = readbuffer.lend()
        return view

    def buffer_updated(self, nbytes: int) -> None:
        view, self._read_view = self._read_view, None
        assert view is not None, "buffer_updated without get_buffer"
        try:
            self.data_received(view[:nbytes])  # h2 copies what it is given
        finally:
            readbuffer.give_back(view)

    def data_received(self, data: bytes | memoryview) -> None:
        self._keepalive.heard()
        if not self.ready.done():
            self.ready.set_result(None)  # the peer spoke: it accepted our certificate
        try:
            events = self._core.receive_data(data)
        except TunnelClosed as exc:
            log.warning("closing the connection to %s: %s", self.peer_name, exc)
            self._flush()
            self.close_now(str(exc))
            return
        self._dispatch_all(events)
        self._flush()

    def eof_received(self) -> bool:
        self._streams.fail_all(f"{self.peer_name} closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection to {self.peer_name} lost: {exc}" if exc else "connection closed"
        if self.goaway is not None and self.goaway.reason:
            reason = f"{self.peer_name} closed the connection: {self.goaway.reason}"
        self._keepalive.cancel()
        self._streams.idle.cancel()
        self._streams.fail_all(reason)
        if not self.ready.done():
            self.ready.set_exception(TunnelClosed(reason))
            self.ready.exception()  # retrieved: nobody may be waiting for it
        if not self.closed.done():
            self.closed.set_result(reason)

    def pause_writing(self) -> None:
        self._core.pause_output()

    def resume_writing(self) -> None:
        self._dispatch_all(self._core.resume_output())
        self._flush()

    # -- public API ---------------------------------------------------------

    @property
    def peer_name(self) -> str:
        """The peer in log lines and reasons (a server names its agent once it is known)."""
        return self._streams.peer_name

    @peer_name.setter
    def peer_name(self, name: str) -> None:
        self._streams.peer_name = name

    @property
    def failed(self) -> bool:
        """Every stream has been failed: the connection is gone."""
        return self._streams.failed

    @property
    def bytes_in(self) -> int:
        """Stream payload received, in bytes."""
        return self._streams.bytes_in

    @property
    def bytes_out(self) -> int:
        """Stream payload sent, in bytes."""
        return self._streams.bytes_out

    @property
    def is_usable(self) -> bool:
        """True while new streams may be opened on this connection."""
        return (
            self._transport is not None
            and not self._transport.is_closing()
            and not self.failed
            and not self.goaway_received
            and self._core.is_open
        )

    @property
    def has_room(self) -> bool:
        """Usable, with fewer streams open or opening than the peer's MAX_CONCURRENT_STREAMS.

        A hint (cheap, no walk of h2's streams): ``open_stream`` may still raise
        ``TooManyStreams`` for a stream the peer has not finished closing yet.
        """
        return self.is_usable and len(self._streams) < self._core.stream_limit

    @property
    def stream_limit(self) -> int:
        """The peer's MAX_CONCURRENT_STREAMS."""
        return self._core.stream_limit

    @property
    def refused_by_peer(self) -> bool:
        """The peer ended the connection with an error GOAWAY: it turned us away."""
        return self.goaway is not None and self.goaway.error_code != ErrorCodes.NO_ERROR

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The address of the far end of our socket: the peer, or the corporate proxy
        when the connection runs through one; None before it is made."""
        if self._transport is None:
            return None
        peer = self._transport.get_extra_info("peername")
        return (peer[0], peer[1]) if peer else None

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    async def open_stream(self, authority: str, handler: StreamHandler) -> TunnelStream:
        """Agent: CONNECT to ``authority`` through the server; raise on refusal.

        Raises ``StreamRefused`` (the server's status and reason), ``StreamError``
        or ``TunnelClosed``. Cancelling the wait resets the stream.
        """
        if not self.is_usable:
            raise TunnelClosed("the tunnel connection is closing")
        stream_id = self._core.open_stream(authority)
        future: asyncio.Future[None] = self._loop.create_future()
        self._streams.expect(stream_id, future, handler)
        self._flush()
        try:
            await future
        except BaseException:
            self._streams.give_up(stream_id)
            raise
        return TunnelStream(self._streams, stream_id, handler)

    def accept(self, stream_id: int, handler: StreamHandler) -> TunnelStream:
        """Server: the target is connected; answer 200 and start carrying bytes."""
        self._core.accept_stream(stream_id)
        stream = self._streams.add(stream_id, handler)
        self._schedule_flush()
        return stream

    def reject(self, stream_id: int, status: int, reason: str) -> None:
        """Server: answer the CONNECT with an error status and reason."""
        self._core.reject_stream(stream_id, status, reason)
        self._schedule_flush()

    def refuse_new_streams(self) -> None:
        """Begin a drain: new CONNECTs are refused, open streams carry on."""
        self._core.refuse_new_streams()

    def close(self, reason: str = "", *, refused: bool = False) -> None:
        """GOAWAY (with ``reason`` as its debug data), then close the transport once written.

        A clean end (NO_ERROR) by default; ``refused`` sends ENHANCE_YOUR_CALM, which
        tells the peer it was turned away (too many tunnels) and should back off.
        """
        code = ErrorCodes.ENHANCE_YOUR_CALM if refused else ErrorCodes.NO_ERROR
        self._core.close(code, reason=reason)
        self._flush()
        self._close_transport()

    def close_now(self, reason: str) -> None:
        """Drop the connection at once; every stream fails with ``reason``."""
        self._streams.fail_all(reason)
        if self._transport is not None:
            self._transport.abort()

    async def finish(self, reason: str, grace: float = CLOSE_GRACE) -> None:
        """``close(reason)``, and return only once the connection is gone.

        Closing a TLS connection is a round trip: each side sends close_notify
        and its socket is closed when the peer's arrives (or, in asyncio, after
        a 30 s shutdown timeout). A program that stopped right after ``close``
        would leave that socket open behind it, so this waits up to ``grace``
        seconds for the peer, then aborts the connection, and returns once
        ``connection_lost`` has run. Never raises on account of the peer.
        """
        self.close(reason)
        if self._transport is None:
            return  # never connected: nothing to wait for
        if await self._closed_within(grace):
            return
        self.close_now(f"{reason}: {self.peer_name} did not finish closing in {grace:g} s")
        if not await self._closed_within(grace):  # an abort ends it at the next loop turn
            log.warning("the connection to %s did not close after an abort", self.peer_name)

    async def _closed_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await asyncio.shield(self.closed)
        except TimeoutError:
            return False
        return True

    def _close_transport(self) -> None:
        # Once only: asyncio's TLS transport forgets its protocol on a second
        # close(), after which abort() does nothing and a peer that never sends
        # close_notify holds the socket open for the whole shutdown timeout.
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # -- internals ----------------------------------------------------------

    def _dispatch_all(self, events: list[TunnelEvent]) -> None:
        for event in events:
            try:
                self._dispatch(event)
            except Exception as exc:
                # A stream's handler failed (say, its client socket died under it):
                # that stream ends, the tunnel and its other streams live on.
                stream_id = getattr(event, "stream_id", None)
                if stream_id is None:
                    raise
                self._streams.handler_failed(stream_id, exc)

    def _dispatch(self, event: object) -> None:
        match event:
            case DataReceived(stream_id, data):
                self._streams.data(stream_id, data)
            case SendBufferDrained(stream_id):
                self._streams.drained(stream_id)
            case StreamEnded(stream_id):
                self._streams.ended(stream_id)
            case StreamAccepted(stream_id):
                self._settle_open(stream_id, None)
            case StreamRejected(stream_id, status, reason):
                self._settle_open(stream_id, StreamRefused(status, reason))
            case StreamReset(stream_id, code):
                self._streams.reset_by_peer(stream_id, code)
            case StreamRequested(stream_id, authority):
                self.last_activity = time.time()
                if self._on_stream_request is None:
                    self.reject(stream_id, 405, "this side does not accept streams")
                else:
                    self._on_stream_request(self, stream_id, authority)
            case PingAcknowledged():
                self._keepalive.acknowledged()
            case ConnectionTerminated(code, _, reason):
                self.goaway_received = True
                self.goaway = event
                log.debug("%s sent GOAWAY (code %d): %s", self.peer_name, code, reason)
                if self.active_streams == 0:
                    self._close_transport()

    def _settle_open(self, stream_id: int, error: Exception | None) -> None:
        if self._streams.settle(stream_id, error):
            self.last_activity = time.time()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._streams.forget_finished()
        data = self._core.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # -- keepalive (Keepalive's callbacks) ------------------------------------

    def _send_ping(self) -> None:
        self._core.ping()
        self._flush()

    def _on_keepalive_lost(self) -> None:
        log.warning(
            "no answer to keepalive PING from %s within %.1f s: the connection is dead",
            self.peer_name,
            self._keepalive.timeout,
        )
        self.close_now(f"keepalive timeout: {self.peer_name} did not answer a PING")
