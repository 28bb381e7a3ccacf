"""A TCP connection held like a tunnel stream: the upstream of a proxy driver.

:class:`SocketStream` gives a socket the interface of a
:class:`~fluidity.transport.streams.TunnelStream` (``write``, ``write_eof``,
``acknowledge``, ``abort``) and reports to the same
:class:`~fluidity.transport.streams.StreamHandler` callbacks, so a
:class:`~fluidity.transport.proxydriver.ProxyDriver` drives both alike. The
agent's ``direct:`` connections (``fluidity.agent.direct``) and the server's
HTTPS proxy connections to targets (``fluidity.server.httpsproxy``) are both one.

Backpressure mirrors HTTP/2 flow control: bytes handed to the handler count as
outstanding until it acknowledges them, and the socket stops being read while
:data:`WINDOW` bytes are outstanding. Writes report a full socket buffer by
returning False, and ``stream_drained`` follows once it empties.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar, cast

from fluidity.transport.sockopts import reset_transport, set_tcp_keepalive
from fluidity.transport.streams import StreamHandler

# Bytes given to the handler and not yet acknowledged before the socket is paused:
# the same order as one HTTP/2 stream window, so a socket upstream buffers no more
# than a tunnelled one.
WINDOW = 256 * 1024

_Call = Callable[[StreamHandler], None]


class SocketStream(asyncio.Protocol):
    """One TCP connection reporting to ``handler``.

    The handler may hear from the target as soon as the connection is made, before
    whoever opens it returns it (a target that greets first, bytes that came with a
    proxy's CONNECT answer): like a tunnel stream's opener, it holds what arrives
    until it knows the stream.
    """

    describe: ClassVar[str] = "connection"  # what a reset reason calls it

    def __init__(self, authority: str, handler: StreamHandler) -> None:
        self.authority = authority
        self.handler: StreamHandler | None = handler
        self.transport: asyncio.Transport | None = None
        self._outstanding = 0
        self._reading_paused = False
        self._writing_paused = False
        self._ended = {"in": False, "out": False}
        self._closed = False  # the connection is gone or going

    # -- the holder's side (as TunnelStream) ------------------------------------------

    def write(self, data: bytes) -> bool:
        """Send bytes; False means pause the source until ``stream_drained``."""
        if self.transport is None or self._closed:
            return True  # gone: the handler hears (or heard) stream_reset
        self.transport.write(data)
        return not self._writing_paused

    def write_eof(self) -> None:
        """Half-close after the queued bytes."""
        if self.transport is None or self._closed or self._ended["out"]:
            return
        self._ended["out"] = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._close_if_done()

    def acknowledge(self, size: int) -> None:
        """``size`` bytes were passed on: read more once under half the window."""
        self._outstanding -= size
        if self._reading_paused and self._outstanding < WINDOW // 2 and not self._closed:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def abort(self) -> None:
        """Reset the connection; the handler hears nothing more."""
        self._closed = True
        self.handler = None
        if self.transport is not None:
            reset_transport(self.transport)  # a RST: the target must not take a cut for an end

    def finish(self) -> None:
        """Close the connection in order (FIN) after complete exchanges; the handler
        hears nothing more."""
        self._closed = True
        self.handler = None
        if self.transport is not None:
            self.transport.close()

    @property
    def tunnel_alive(self) -> bool:
        """Always True: there is no tunnel to lose, so a broken connection is a
        lost upstream, never a reason to replay the request on a new tunnel."""
        return True

    # -- the connection's side (asyncio.Protocol) -------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        set_tcp_keepalive(transport)

    def data_received(self, data: bytes) -> None:
        self._outstanding += len(data)
        if self._outstanding >= WINDOW and not self._reading_paused:
            self._reading_paused = True
            cast(asyncio.Transport, self.transport).pause_reading()
        self._report(lambda handler: handler.stream_data(data))

    def eof_received(self) -> bool:
        self._ended["in"] = True
        self._report(lambda handler: handler.stream_ended())
        self._close_if_done()
        return True  # keep the socket open: our side may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        if all(self._ended.values()) and exc is None:
            return  # ended both ways: the handler heard everything already
        reason = f"{self.describe} to {self.authority} lost: {exc or 'closed'}"
        self._report(lambda handler: handler.stream_reset(reason))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._report(lambda handler: handler.stream_drained())

    # -- internals --------------------------------------------------------------------

    def _report(self, call: _Call) -> None:
        if self.handler is not None:  # None once the holder aborted
            call(self.handler)

    def _close_if_done(self) -> None:
        if all(self._ended.values()) and self.transport is not None:
            self.transport.close()
