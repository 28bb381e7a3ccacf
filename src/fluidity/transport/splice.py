"""Joining a TCP socket to a tunnel stream: bytes both ways, with backpressure.

``Splice`` is the asyncio protocol of the socket and the handler of the
stream at once. Socket bytes go into the stream; when the stream's queue is
full the socket stops being read. Stream bytes go to the socket and are
acknowledged to the tunnel only while the socket's own buffer has room, so a
slow reader slows its sender through HTTP/2 flow control and nothing is held
beyond one window. Half-closes pass through both ways; a reset or a lost
socket aborts the other side (a TCP reset towards the target, RST_STREAM
towards the agent), so a truncation is never disguised as an end. A stream the
agent finished after complete exchanges (RST_STREAM with NO_ERROR: a client left
its kept-alive connection) closes the socket in order instead: the target sees
FIN after the bytes already written, as it would from a client of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import cast

from fluidity.transport.sockopts import reset_transport, set_tcp_keepalive
from fluidity.transport.streams import TunnelStream


class Splice(asyncio.Protocol):
    """One socket, one tunnel stream; call ``attach`` once the stream exists."""

    def __init__(self, on_close: Callable[[Splice], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.stream: TunnelStream | None = None
        self._socket_paused = False
        self._deferred_ack = 0
        self._socket_eof = False
        self._stream_eof = False
        self._closed = False
        self._on_close = on_close
        self.bytes_up = 0
        self.bytes_down = 0

    # -- setup --------------------------------------------------------------

    def attach(self, stream: TunnelStream) -> None:
        """Start carrying bytes between the socket and ``stream``."""
        self.stream = stream
        stream.handler = self
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    # -- socket side (asyncio.Protocol) --------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        set_tcp_keepalive(transport)
        if self.stream is None:
            self.transport.pause_reading()  # nothing may flow before the stream is accepted

    def data_received(self, data: bytes) -> None:
        assert self.stream is not None
        self.bytes_up += len(data)
        if not self.stream.write(data) and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._socket_eof = True
        if self.stream is not None:
            self.stream.write_eof()
        self._maybe_close()
        return True  # keep the socket open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        clean = exc is None and self._socket_eof and self._stream_eof
        if self.stream is not None and not clean:
            self.stream.abort()  # never let a cut look like an end
        self._finish()

    def pause_writing(self) -> None:
        self._socket_paused = True

    def resume_writing(self) -> None:
        self._socket_paused = False
        if self._deferred_ack and self.stream is not None:
            self.stream.acknowledge(self._deferred_ack)
            self._deferred_ack = 0

    # -- stream side (StreamHandler) ----------------------------------------

    def stream_data(self, data: bytes) -> None:
        if self.transport is None or self._closed:
            return
        self.bytes_down += len(data)
        self.transport.write(data)
        if self._socket_paused:
            self._deferred_ack += len(data)
        elif self.stream is not None:
            self.stream.acknowledge(len(data))

    def stream_ended(self) -> None:
        self._stream_eof = True
        transport = self.transport
        writable = transport is not None and not self._closed and not transport.is_closing()
        if writable and transport is not None and transport.can_write_eof():
            with contextlib.suppress(OSError):  # the target is gone: connection_lost says so
                transport.write_eof()
        self._maybe_close()

    def stream_reset(self, reason: str) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            reset_transport(self.transport)
            self._finish()

    def stream_finished(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()  # flushes what is queued, then FIN
            self._finish()

    def stream_drained(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    # -- internals ----------------------------------------------------------

    def close(self) -> None:
        """Abort both sides (shutdown deadline passed)."""
        if self.stream is not None:
            self.stream.abort()
        if self.transport is not None:
            reset_transport(self.transport)

    def _maybe_close(self) -> None:
        if self._socket_eof and self._stream_eof and self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None
