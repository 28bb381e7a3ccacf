"""The asyncio driver of one tunnel connection, and the streams it carries.

``TunnelConnection`` is the ``asyncio.Protocol`` of the TLS transport between
agent and server. It is the one place that reads the connection: every chunk
goes into the sans-I/O ``TunnelProtocol``, the events that come out are
dispatched to the streams, and what the protocol has to send is written back.
There are no tasks per stream and no awaits per chunk: streams are driven by
callbacks, like transports and protocols.

A ``TunnelStream`` looks like a transport to whoever holds it (``write``,
``write_eof``, ``abort``) and reports to a ``StreamHandler`` the way a
transport reports to its protocol. Backpressure runs both ways:

* ``write`` returns False when the stream's send queue is full; the handler
  hears ``stream_drained`` when it may write again.
* ``acknowledge`` hands flow-control window back to the peer; a handler that
  cannot pass bytes on (its own transport is paused) acknowledges later, and
  the peer stops after one window.

Liveness, on both sides: after ``keepalive_interval`` seconds without a byte
from the peer an HTTP/2 PING goes out, and a PING unanswered for
``keepalive_timeout`` seconds declares the connection dead: every stream fails
at once and the transport is dropped, so a blackholed path is noticed within
``keepalive_interval + keepalive_timeout``. Optionally, a stream with no bytes
either way for ``stream_idle_timeout`` seconds is reset (one sweep timer per
connection, every quarter timeout, so a silent stream goes between 1 and 1.25
timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol, cast

from h2.errors import ErrorCodes

from fluidity.errors import StreamError, StreamRefused, StreamUnprocessed, TunnelClosed
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

log = logging.getLogger(__name__)

# Seconds a closing program waits for the peer's TLS close_notify before it aborts
# the connection (``TunnelConnection.finish``): a loopback or LAN round trip takes
# milliseconds, one through a busy corporate proxy rarely more than a few hundred.
CLOSE_GRACE = 1.0


class StreamHandler(Protocol):
    """Receives what happens on one tunnel stream."""

    def stream_data(self, data: bytes) -> None:
        """Bytes from the peer; call ``stream.acknowledge(len(data))`` once passed on."""

    def stream_ended(self) -> None:
        """The peer will send nothing more (half-close)."""

    def stream_reset(self, reason: str) -> None:
        """The stream is gone (reset, or the tunnel died); no more calls follow."""

    def stream_drained(self) -> None:
        """The send queue has room again after ``write`` returned False."""


class TunnelStream:
    """One CONNECT stream, used like a transport."""

    __slots__ = ("_conn", "handler", "stream_id")

    def __init__(self, conn: TunnelConnection, stream_id: int, handler: StreamHandler) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.handler = handler

    def write(self, data: bytes) -> bool:
        """Queue bytes; False means pause the source until ``stream_drained``."""
        return self._conn._send(self.stream_id, data)

    def write_eof(self) -> None:
        """Half-close after the queued bytes."""
        self._conn._end(self.stream_id)

    def acknowledge(self, size: int) -> None:
        """``size`` received bytes have been passed on: let the peer send more."""
        self._conn._acknowledge(self.stream_id, size)

    def abort(self) -> None:
        """Reset the stream; the handler hears nothing more."""
        self._conn._reset(self.stream_id)

    @property
    def tunnel_alive(self) -> bool:
        """False once the tunnel connection carrying this stream has failed.

        A handler told ``stream_reset`` reads it to tell the stream's own reset
        (by the peer, or idle) from the loss of the whole tunnel.
        """
        return not self._conn.failed


class _PendingOpen:
    """An agent's CONNECT awaiting the server's answer."""

    __slots__ = ("future", "handler")

    def __init__(self, future: asyncio.Future[None], handler: StreamHandler) -> None:
        self.future = future
        self.handler = handler


StreamRequestCallback = Callable[["TunnelConnection", int, str], None]


# Decrypted bytes land here (see ``get_buffer``); uvloop's TLS layer reads at most
# 256 KiB at a time.
READ_BUFFER = 256 * 1024


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
        self.peer_name = peer_name
        self._core = TunnelProtocol(side, max_streams=max_streams)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, StreamHandler] = {}
        self._opening: dict[int, _PendingOpen] = {}
        self._on_stream_request = on_stream_request
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        self._idle_timeout = stream_idle_timeout
        self._idle_timer: asyncio.TimerHandle | None = None
        self._stream_seen: dict[int, float] = {}  # last byte either way, per stream
        self.failed = False  # every stream has been failed: the connection is gone
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self.last_activity = time.time()
        self._last_received = self._loop.time()
        self.bytes_in = 0
        self.bytes_out = 0
        self.goaway_received = False
        self.goaway: ConnectionTerminated | None = None  # the peer's GOAWAY, if it sent one
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self._read_view = memoryview(bytearray(READ_BUFFER))

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        set_tcp_keepalive(transport)
        self._core.initiate()
        self._flush()
        self._schedule_ping()
        self._schedule_idle_sweep()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        # h2 copies what it is given, so the buffer is free again on return.
        self.data_received(self._read_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self._last_received = self._loop.time()
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
        self._fail_all(f"{self.peer_name} closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection to {self.peer_name} lost: {exc}" if exc else "connection closed"
        if self.goaway is not None and self.goaway.reason:
            reason = f"{self.peer_name} closed the connection: {self.goaway.reason}"
        self._cancel_timers()
        self._fail_all(reason)
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
        return len(self._streams) + len(self._opening)

    async def open_stream(self, authority: str, handler: StreamHandler) -> TunnelStream:
        """Agent: CONNECT to ``authority`` through the server; raise on refusal.

        Raises ``StreamRefused`` (the server's status and reason), ``StreamError``
        or ``TunnelClosed``. Cancelling the wait resets the stream.
        """
        if not self.is_usable:
            raise TunnelClosed("the tunnel connection is closing")
        stream_id = self._core.open_stream(authority)
        future: asyncio.Future[None] = self._loop.create_future()
        self._opening[stream_id] = _PendingOpen(future, handler)
        self._flush()
        try:
            await future
        except BaseException:
            if self._opening.pop(stream_id, None) is not None:
                self._reset(stream_id)
            raise
        return TunnelStream(self, stream_id, handler)

    def accept(self, stream_id: int, handler: StreamHandler) -> TunnelStream:
        """Server: the target is connected; answer 200 and start carrying bytes."""
        self._core.accept_stream(stream_id)
        self._streams[stream_id] = handler
        self._saw_traffic(stream_id)
        self._schedule_flush()
        return TunnelStream(self, stream_id, handler)

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
        self._fail_all(reason)
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

    # -- stream plumbing (called by TunnelStream) ---------------------------

    def _send(self, stream_id: int, data: bytes) -> bool:
        self.bytes_out += len(data)
        self._saw_traffic(stream_id)
        try:
            ok = self._core.send(stream_id, data)
        except StreamError:
            return True  # stream already gone: the handler hears stream_reset
        self._schedule_flush()
        return ok

    def _end(self, stream_id: int) -> None:
        self._core.end_stream(stream_id)
        self._schedule_flush()

    def _acknowledge(self, stream_id: int, size: int) -> None:
        self._core.acknowledge(stream_id, size)
        self._schedule_flush()

    def _reset(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        self._core.reset_stream(stream_id)
        self._schedule_flush()

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
                self._handler_failed(stream_id, exc)

    def _handler_failed(self, stream_id: int, exc: Exception) -> None:
        log.warning(
            "stream %d to %s: its handler failed (%s: %s); resetting the stream",
            stream_id,
            self.peer_name,
            type(exc).__name__,
            exc,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        handler = self._streams.pop(stream_id, None)
        self._reset(stream_id)
        if handler is not None:
            with contextlib.suppress(Exception):  # it failed once already: nothing more to do
                handler.stream_reset(f"stream failed: {exc}")

    def _dispatch(self, event: object) -> None:
        match event:
            case DataReceived(stream_id, data):
                self.bytes_in += len(data)
                self._saw_traffic(stream_id)
                handler = self._streams.get(stream_id)
                if handler is not None:
                    handler.stream_data(data)
            case SendBufferDrained(stream_id):
                handler = self._streams.get(stream_id)
                if handler is not None:
                    handler.stream_drained()
            case StreamEnded(stream_id):
                handler = self._streams.get(stream_id)
                if handler is not None:
                    handler.stream_ended()
            case StreamAccepted(stream_id):
                self._settle_open(stream_id, None)
            case StreamRejected(stream_id, status, reason):
                self._settle_open(stream_id, StreamRefused(status, reason))
            case StreamReset(stream_id, code):
                self._on_reset(stream_id, code)
            case StreamRequested(stream_id, authority):
                self.last_activity = time.time()
                if self._on_stream_request is None:
                    self.reject(stream_id, 405, "this side does not accept streams")
                else:
                    self._on_stream_request(self, stream_id, authority)
            case PingAcknowledged():
                self._on_ping_ack()
            case ConnectionTerminated(code, _, reason):
                self.goaway_received = True
                self.goaway = event
                log.debug("%s sent GOAWAY (code %d): %s", self.peer_name, code, reason)
                if self.active_streams == 0:
                    self._close_transport()

    def _settle_open(self, stream_id: int, error: Exception | None) -> None:
        pending = self._opening.pop(stream_id, None)
        if pending is None:
            return
        if pending.future.done():  # the opener gave up already
            self._reset(stream_id)
            return
        self.last_activity = time.time()
        if error is None:
            self._streams[stream_id] = pending.handler
            self._saw_traffic(stream_id)
            pending.future.set_result(None)
        else:
            pending.future.set_exception(error)

    def _on_reset(self, stream_id: int, code: int) -> None:
        pending = self._opening.pop(stream_id, None)
        if pending is not None and not pending.future.done():
            if code == ErrorCodes.REFUSED_STREAM:
                error: StreamError = StreamUnprocessed(
                    f"{self.peer_name} refused the stream unprocessed: it is draining"
                )
            else:
                error = StreamError(f"stream reset by {self.peer_name} (code {code})")
            pending.future.set_exception(error)
        handler = self._streams.pop(stream_id, None)
        if handler is not None:
            handler.stream_reset(f"stream reset by {self.peer_name} (code {code})")

    def _fail_all(self, reason: str) -> None:
        self.failed = True  # first: handlers read it (TunnelStream.tunnel_alive)
        opening, self._opening = self._opening, {}
        for pending in opening.values():
            if not pending.future.done():
                pending.future.set_exception(TunnelClosed(reason))
        streams, self._streams = self._streams, {}
        for handler in streams.values():
            handler.stream_reset(reason)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        for stream_id in self._core.take_finished():
            self._streams.pop(stream_id, None)
        data = self._core.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # -- keepalive ----------------------------------------------------------

    def _schedule_ping(self) -> None:
        if self._keepalive_interval > 0:
            self._ping_timer = self._loop.call_later(self._keepalive_interval, self._on_ping_timer)

    def _on_ping_timer(self) -> None:
        idle = self._loop.time() - self._last_received
        if idle < self._keepalive_interval:
            self._ping_timer = self._loop.call_later(
                self._keepalive_interval - idle, self._on_ping_timer
            )
            return
        self._core.ping()
        self._flush()
        self._ping_deadline = self._loop.call_later(self._keepalive_timeout, self._on_ping_lost)

    def _on_ping_ack(self) -> None:
        if self._ping_deadline is not None:
            self._ping_deadline.cancel()
            self._ping_deadline = None
            self._schedule_ping()

    def _on_ping_lost(self) -> None:
        self._ping_deadline = None
        log.warning(
            "no answer to keepalive PING from %s within %.1f s: the connection is dead",
            self.peer_name,
            self._keepalive_timeout,
        )
        self.close_now(f"keepalive timeout: {self.peer_name} did not answer a PING")

    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._ping_deadline, self._idle_timer):
            if timer is not None:
                timer.cancel()

    # -- idle streams ---------------------------------------------------------

    def _saw_traffic(self, stream_id: int) -> None:
        if self._idle_timeout > 0:
            self._stream_seen[stream_id] = self._loop.time()

    def _schedule_idle_sweep(self) -> None:
        if self._idle_timeout > 0:
            self._idle_timer = self._loop.call_later(self._idle_timeout / 4, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Reset every stream silent for ``stream_idle_timeout``; forget finished ones."""
        now = self._loop.time()
        for stream_id, seen in list(self._stream_seen.items()):
            handler = self._streams.get(stream_id)
            if handler is None:
                del self._stream_seen[stream_id]
            elif now - seen >= self._idle_timeout:
                del self._stream_seen[stream_id]
                self._reset(stream_id)
                log.info(
                    "%s: stream %d idle for %g s: closed (stream_idle_timeout)",
                    self.peer_name,
                    stream_id,
                    self._idle_timeout,
                )
                handler.stream_reset(
                    f"no bytes either way for {self._idle_timeout:g} s (stream_idle_timeout)"
                )
        self._schedule_idle_sweep()


def reset_transport(transport: asyncio.BaseTransport) -> None:
    """Abort ``transport`` so the peer sees a TCP reset (RST), not an orderly end (FIN).

    ``abort()`` alone closes the socket, and the kernel then sends FIN unless
    unread bytes remain: a cut close-delimited body or CONNECT stream would look
    complete. SO_LINGER with a zero timeout makes the close a reset.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # not a TCP socket, or already closed: abort is all there is
    cast(asyncio.Transport, transport).abort()


def set_tcp_keepalive(transport: asyncio.BaseTransport, idle: int = 30) -> None:
    """TCP keepalive and no Nagle delay on the transport's socket, where supported."""
    found = _family_and_fileno(transport)
    if found is None:
        return  # not a TCP socket (tests over socketpair): nothing to tune
    # One plain socket object for all the options: uvloop's transport socket
    # builds a throwaway socket (and its syscalls) for every setsockopt call,
    # which tripled the syscalls of opening a tunnel. Family and type are
    # given, so the constructor asks the kernel nothing.
    family, fd = found
    sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
    try:
        _set_keepalive_options(sock, idle)
    finally:
        sock.detach()  # the transport owns the descriptor


def _set_keepalive_options(sock: socket.socket, idle: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return  # the socket is gone already: nothing to tune
    # windows: each probe option exists on some systems only (Windows 10 1709+ has
    # all three, older Windows and some BSDs lack some): set each one that exists.
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _family_and_fileno(transport: asyncio.BaseTransport) -> tuple[int, int] | None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    fd: int = sock.fileno()
    return (int(sock.family), fd) if fd >= 0 else None
