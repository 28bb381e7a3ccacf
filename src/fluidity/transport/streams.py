"""The streams one tunnel connection carries: handler, handle, and the table between.

A ``TunnelStream`` looks like a transport to whoever holds it (``write``,
``write_eof``, ``abort``) and reports to a ``StreamHandler`` the way a
transport reports to its protocol. Backpressure runs both ways:

* ``write`` returns False when the stream's send queue is full; the handler
  hears ``stream_drained`` when it may write again.
* ``acknowledge`` hands flow-control window back to the peer; a handler that
  cannot pass bytes on (its own transport is paused) acknowledges later, and
  the peer stops after one window.

``StreamTable`` is what a ``TunnelConnection`` knows of its streams: the
handler of each open one, and each of the agent's CONNECTs still awaiting the
server's answer. The connection routes the stream events of its sans-I/O core
here, and each reaches its handler; a stream's commands go to the core, then
``schedule_flush`` asks the connection to write what the core has to send.
A handler hears ``stream_reset`` or ``stream_finished`` at most once, and
nothing after it.

How a stream ends tells the far side how to end what it feeds. Both sides'
half-closes (``write_eof``, END_STREAM) are an orderly end; ``abort`` sends
RST_STREAM (CANCEL): something was cut, and the server resets the target's TCP
connection. ``finish`` sends RST_STREAM with NO_ERROR: the holder is done with a
stream whose exchanges were complete (the agent, when a client leaves a kept-alive
connection), and the server closes the target's connection in order (FIN). A
server that predates ``finish`` resets it as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from h2.errors import ErrorCodes

from fluidity.errors import StreamError, StreamUnprocessed, TunnelClosed
from fluidity.protocol.tunnel import TunnelProtocol
from fluidity.transport.liveness import IdleSweep

log = logging.getLogger(__name__)


class StreamHandler(Protocol):
    """Receives what happens on one tunnel stream."""

    def stream_data(self, data: bytes) -> None:
        """Bytes from the peer; call ``stream.acknowledge(len(data))`` once passed on."""

    def stream_ended(self) -> None:
        """The peer will send nothing more (half-close)."""

    def stream_reset(self, reason: str) -> None:
        """The stream is gone (reset, or the tunnel died); no more calls follow."""

    def stream_finished(self) -> None:
        """The peer is done with the stream, nothing cut (RST_STREAM NO_ERROR): end what
        it feeds in order; no more calls follow."""

    def stream_drained(self) -> None:
        """The send queue has room again after ``write`` returned False."""


class TunnelStream:
    """One CONNECT stream, used like a transport."""

    __slots__ = ("_table", "handler", "stream_id")

    def __init__(self, table: StreamTable, stream_id: int, handler: StreamHandler) -> None:
        self._table = table
        self.stream_id = stream_id
        self.handler = handler

    def write(self, data: bytes) -> bool:
        """Queue bytes; False means pause the source until ``stream_drained``."""
        return self._table.send(self.stream_id, data)

    def write_eof(self) -> None:
        """Half-close after the queued bytes."""
        self._table.end(self.stream_id)

    def acknowledge(self, size: int) -> None:
        """``size`` received bytes have been passed on: let the peer send more."""
        self._table.acknowledge(self.stream_id, size)

    def abort(self) -> None:
        """Reset the stream (something was cut); the handler hears nothing more."""
        self._table.reset(self.stream_id)

    def finish(self) -> None:
        """Done with the stream after complete exchanges: the peer ends what it feeds in
        order (RST_STREAM with NO_ERROR); the handler hears nothing more."""
        self._table.reset(self.stream_id, ErrorCodes.NO_ERROR)

    @property
    def tunnel_alive(self) -> bool:
        """False once the tunnel connection carrying this stream has failed.

        A handler told ``stream_reset`` reads it to tell the stream's own reset
        (by the peer, or idle) from the loss of the whole tunnel.
        """
        return not self._table.failed


class _PendingOpen:
    """An agent's CONNECT awaiting the server's answer."""

    __slots__ = ("future", "handler")

    def __init__(self, future: asyncio.Future[None], handler: StreamHandler) -> None:
        self.future = future
        self.handler = handler


class StreamTable:
    """The handlers of one connection's streams, open and opening.

    ``peer_name`` names the peer in log lines and reset reasons; ``failed``
    turns True once every stream has been failed (the connection is gone).
    ``bytes_in`` and ``bytes_out`` count the stream payload each way.
    """

    def __init__(
        self,
        core: TunnelProtocol,
        loop: asyncio.AbstractEventLoop,
        *,
        idle_timeout: float,
        schedule_flush: Callable[[], None],
        peer_name: str,
    ) -> None:
        self._core = core
        self._schedule_flush = schedule_flush
        self.peer_name = peer_name
        self._handlers: dict[int, StreamHandler] = {}
        self._opening: dict[int, _PendingOpen] = {}
        self.idle = IdleSweep(loop, idle_timeout, is_open=self._is_open, expire=self._expire)
        self.failed = False
        self.bytes_in = 0
        self.bytes_out = 0

    def __len__(self) -> int:
        """Streams open or opening."""
        return len(self._handlers) + len(self._opening)

    # -- a stream's commands (from TunnelStream) ------------------------------

    def send(self, stream_id: int, data: bytes) -> bool:
        self.bytes_out += len(data)
        self.idle.saw(stream_id)
        try:
            ok = self._core.send(stream_id, data)
        except StreamError:
            return True  # stream already gone: the handler hears stream_reset
        self._schedule_flush()
        return ok

    def end(self, stream_id: int) -> None:
        self._core.end_stream(stream_id)
        self._schedule_flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        self._core.acknowledge(stream_id, size)
        self._schedule_flush()

    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        self._handlers.pop(stream_id, None)
        self._core.reset_stream(stream_id, code)
        self._schedule_flush()

    # -- opening and accepting ------------------------------------------------

    def expect(self, stream_id: int, future: asyncio.Future[None], handler: StreamHandler) -> None:
        """Agent: ``future`` settles with the server's answer; then ``handler`` hears."""
        self._opening[stream_id] = _PendingOpen(future, handler)

    def give_up(self, stream_id: int) -> None:
        """Agent: the opener stopped waiting; reset the stream unless it was answered."""
        if self._opening.pop(stream_id, None) is not None:
            self.reset(stream_id)

    def settle(self, stream_id: int, error: Exception | None) -> bool:
        """Agent: the server answered (``error`` None: accepted). True if an opener heard it."""
        pending = self._opening.pop(stream_id, None)
        if pending is None:
            return False
        if pending.future.done():  # the opener gave up already
            self.reset(stream_id)
            return False
        if error is None:
            self._handlers[stream_id] = pending.handler
            self.idle.saw(stream_id)
            pending.future.set_result(None)
        else:
            pending.future.set_exception(error)
        return True

    def add(self, stream_id: int, handler: StreamHandler) -> TunnelStream:
        """``handler`` hears from ``stream_id`` from now on."""
        self._handlers[stream_id] = handler
        self.idle.saw(stream_id)
        return TunnelStream(self, stream_id, handler)

    def forget_finished(self) -> None:
        """Drop the handlers of streams the core has finished (both sides ended)."""
        for stream_id in self._core.take_finished():
            self._handlers.pop(stream_id, None)

    # -- events from the peer -------------------------------------------------

    def data(self, stream_id: int, data: bytes) -> None:
        self.bytes_in += len(data)
        self.idle.saw(stream_id)
        handler = self._handlers.get(stream_id)
        if handler is not None:
            handler.stream_data(data)

    def drained(self, stream_id: int) -> None:
        handler = self._handlers.get(stream_id)
        if handler is not None:
            handler.stream_drained()

    def ended(self, stream_id: int) -> None:
        handler = self._handlers.get(stream_id)
        if handler is not None:
            handler.stream_ended()

    def reset_by_peer(self, stream_id: int, code: int) -> None:
        """The peer reset the stream: fail its opener, or tell its handler."""
        pending = self._opening.pop(stream_id, None)
        if pending is not None and not pending.future.done():
            if code == ErrorCodes.REFUSED_STREAM:
                error: StreamError = StreamUnprocessed(
                    f"{self.peer_name} refused the stream unprocessed: it is draining"
                )
            else:
                error = StreamError(f"stream reset by {self.peer_name} (code {code})")
            pending.future.set_exception(error)
        handler = self._handlers.pop(stream_id, None)
        if handler is None:
            return
        if code == ErrorCodes.NO_ERROR:
            handler.stream_finished()
        else:
            handler.stream_reset(f"stream reset by {self.peer_name} (code {code})")

    def handler_failed(self, stream_id: int, exc: Exception) -> None:
        """A handler raised: that stream ends, the tunnel and its other streams live on."""
        log.warning(
            "stream %d to %s: its handler failed (%s: %s); resetting the stream",
            stream_id,
            self.peer_name,
            type(exc).__name__,
            exc,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        handler = self._handlers.pop(stream_id, None)
        self.reset(stream_id)
        if handler is not None:
            with contextlib.suppress(Exception):  # it failed once already: nothing more to do
                handler.stream_reset(f"stream failed: {exc}")

    def fail_all(self, reason: str) -> None:
        """The connection is gone: every opener and handler hears ``reason``."""
        self.failed = True  # first: handlers read it (TunnelStream.tunnel_alive)
        opening, self._opening = self._opening, {}
        for pending in opening.values():
            if not pending.future.done():
                pending.future.set_exception(TunnelClosed(reason))
        handlers, self._handlers = self._handlers, {}
        for handler in handlers.values():
            handler.stream_reset(reason)

    # -- idle streams (IdleSweep) ---------------------------------------------

    def _is_open(self, stream_id: int) -> bool:
        return stream_id in self._handlers

    def _expire(self, stream_id: int) -> None:
        handler = self._handlers.get(stream_id)
        self.reset(stream_id)
        log.info(
            "%s: stream %d idle for %g s: closed (stream_idle_timeout)",
            self.peer_name,
            stream_id,
            self.idle.timeout,
        )
        if handler is not None:
            handler.stream_reset(
                f"no bytes either way for {self.idle.timeout:g} s (stream_idle_timeout)"
            )
