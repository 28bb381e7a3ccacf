"""The asyncio driver of one proxy client connection: a socket, a session, an upstream.

``ProxyDriver`` is the asyncio protocol of a client connection to a proxy:
the agent's local port (``fluidity.agent.client``) and the server's HTTPS
proxy (``fluidity.server.httpsproxy``) both use it, so there is one
implementation of proxy parsing and forwarding, not two. Everything HTTP or
SOCKS5 lives in the sans-I/O session (``fluidity.protocol.proxy`` and
``fluidity.protocol.dispatch``); this class only moves bytes in and out of it
and carries out the events it emits. A subclass says how an upstream is
opened (``_connect``: a tunnel stream, the agent's direct connection, the
server's dialled connection) and which of its failures answer what status
(``_refusal``).

An upstream is anything with the interface of a tunnel stream (``Upstream``)
that reports to the driver as its ``StreamHandler``. The single task the
driver ever starts is the one that opens an upstream; while it runs the
client is not read, so the session never buffers more than one read. The
upstream may speak before that task resumes (a target that greets first), so
what it reports meanwhile is held and replayed once the session knows the
upstream is open.

Failures are never silent. An upstream that cannot be had answers the status
``_refusal`` gives (403, 502, 503, 504); one that breaks before a response
byte answers 502, except that an idempotent request sent in full is replayed
once when the upstream says its whole tunnel died (``tunnel_alive`` False);
one that breaks later resets the client connection (TCP RST), so a
close-delimited body or a CONNECT stream cannot pass for complete.

An upstream is dropped the way its target should see it end: one whose
exchanges were all complete (the client left its kept-alive connection
between requests) is finished, and the target sees an orderly close (FIN);
one in the middle of something is aborted, and the target sees a reset.

``head_timeout`` bounds every wait for a request head (or a SOCKS5
handshake): the first, and each next one on a kept-alive connection, which is
closed once idle that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import NamedTuple, Protocol, cast

from fluidity.errors import FluidityError
from fluidity.observe.metrics import Metrics
from fluidity.protocol.dispatch import DriverSession
from fluidity.protocol.proxy import (
    CloseClient,
    CloseUpstream,
    EndClient,
    EndUpstream,
    OpenUpstream,
    SendClient,
    SendUpstream,
)
from fluidity.transport.sockopts import reset_transport, set_tcp_keepalive

log = logging.getLogger(__name__)

_TIMER_SLACK = 0.005  # seconds


class Upstream(Protocol):
    """What a driver holds: a ``TunnelStream``, or a socket held like one (``SocketStream``)."""

    def write(self, data: bytes) -> bool: ...

    def write_eof(self) -> None: ...

    def acknowledge(self, size: int) -> None: ...

    def abort(self) -> None: ...

    def finish(self) -> None: ...

    @property
    def tunnel_alive(self) -> bool: ...


class Refusal(NamedTuple):
    """How to answer an upstream that could not be opened: the status and words for the
    client, and the metrics label (``kind``) of the failure."""

    status: int
    reason: str
    kind: str


class ProxyDriver(asyncio.Protocol):
    """Drives a session between a client socket and its upstreams; see the module docstring.

    Subclasses implement ``_connect`` and ``_refusal`` and may extend
    ``connection_made`` and ``connection_lost`` (calling these).
    """

    def __init__(
        self, session: DriverSession, metrics: Metrics, *, head_timeout: float, keepalive: bool
    ) -> None:
        self.session = session
        self.metrics = metrics
        self.head_timeout = head_timeout
        self.keepalive = keepalive
        self.transport: asyncio.Transport | None = None
        self.stream: Upstream | None = None
        self.kind = "idle"
        self.target = ""  # host:port of the current upstream, for the dashboard's top targets
        # Payload bytes from and to the upstream, read once a second by the dashboard.
        self.bytes_in = 0
        self.bytes_out = 0
        self._opening: asyncio.Task[None] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_since: float | None = None  # when the current wait for a head began
        self._client_paused = False  # the client's socket buffer is full
        self._stream_full = False  # the upstream's send queue is full
        self._reading = True
        self._deferred_ack = 0
        self._retried = False
        self._closed = False
        self._held: list[Callable[[], None]] = []  # upstream reports while opening

    # -- what a subclass provides -----------------------------------------------

    async def _connect(self, host: str, port: int) -> Upstream:
        """Open an upstream to ``host:port`` reporting to ``self``; may set ``self.kind``."""
        raise NotImplementedError

    def _refusal(self, exc: FluidityError) -> Refusal | None:
        """The answer to ``_connect`` having raised ``exc``; None lets it propagate."""
        raise NotImplementedError

    # -- the client socket --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self.keepalive:
            set_tcp_keepalive(transport)
        self._sync_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return  # turned away in connection_made, or gone: nothing more to do
        stream = self.stream
        if stream is not None and self.session.relaying:
            # A raw splice (CONNECT, upgrades): the session would only hand the
            # bytes back as one SendUpstream. Skipping the round trip through it
            # is the driver's half of turning the connection into a plain splice.
            self.bytes_out += len(data)
            if not stream.write(data):
                self._stream_full = True
                self._update_reading()
            return
        self.session.receive_client(data)
        self._pump()

    def eof_received(self) -> bool:
        if self._closed:
            return False
        self.session.receive_client(b"")
        self._pump()
        return True  # half-close: the answer may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_head_timer()
        if self._opening is not None:
            self._opening.cancel()
        if self.stream is not None:
            # Between requests nothing is cut, however the client left.
            (self.stream.finish if self.session.idle else self.stream.abort)()
            self.stream = None

    def pause_writing(self) -> None:
        self._client_paused = True

    def resume_writing(self) -> None:
        self._client_paused = False
        if self._deferred_ack and self.stream is not None:
            self.stream.acknowledge(self._deferred_ack)
        self._deferred_ack = 0

    # -- the upstream (StreamHandler) -------------------------------------

    def stream_data(self, data: bytes) -> None:
        if self._opening is not None:
            self._held.append(lambda: self.stream_data(data))
            return
        self.bytes_in += len(data)
        if self.session.relaying:
            # The session would emit SendClient(data) (no data follows the
            # stream's end, so there is nothing else for it to decide).
            if self.transport is not None and not self._closed:
                self.transport.write(data)
        else:
            self.session.receive_upstream(data)
            self._pump()
        if self.stream is None:
            return
        if self._client_paused:
            self._deferred_ack += len(data)
        else:
            self.stream.acknowledge(len(data))

    def stream_ended(self) -> None:
        if self._opening is not None:
            self._held.append(self.stream_ended)
            return
        self.session.receive_upstream(b"")
        self._pump()

    def stream_reset(self, reason: str) -> None:
        if self._opening is not None:
            self._held.append(lambda: self.stream_reset(reason))
            return
        stream, self.stream = self.stream, None
        tunnel_died = stream is not None and not stream.tunnel_alive
        if tunnel_died and not self._retried and self.session.replayable_request() is not None:
            self._retried = True
            log.info("tunnel lost mid-request; retrying the idempotent request once")
            self.session.retry_upstream()
        else:
            self.session.upstream_lost(reason)
        self._pump()

    def stream_finished(self) -> None:
        # The server never finishes a stream; from a peer that does, an end it did
        # not delimit is not known to be complete: treat it as a reset.
        self.stream_reset("the server closed the stream")

    def stream_drained(self) -> None:
        self._stream_full = False
        self._update_reading()

    # -- carrying out the session's events ---------------------------------

    def _pump(self) -> None:
        while (event := self.session.next_event()) is not None:
            match event:
                case SendUpstream(data):
                    self.bytes_out += len(data)
                    if self.stream is not None and not self.stream.write(data):
                        self._stream_full = True
                case SendClient(data):
                    self._head_since = None  # an answer ends the wait; the next one is new
                    if self.transport is not None and not self._closed:
                        self.transport.write(data)
                case OpenUpstream(host, port, kind):
                    self.kind = kind
                    self._opening = asyncio.get_running_loop().create_task(self._open(host, port))
                case EndUpstream():
                    if self.stream is not None:
                        self.stream.write_eof()
                case CloseUpstream(orderly):
                    if self.stream is not None:
                        (self.stream.finish if orderly else self.stream.abort)()
                        self.stream = None
                    self._retried = False
                case EndClient():
                    self._end_client()
                case CloseClient(abort):
                    self._close_client(abort)
        self._update_reading()
        self._sync_head_timer()

    async def _open(self, host: str, port: int) -> None:
        started = asyncio.get_running_loop().time()
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            stream = await self._connect(host, port)
        except FluidityError as exc:
            refusal = self._refusal(exc)
            if refusal is None:
                raise
            elapsed = asyncio.get_running_loop().time() - started
            # The reason is the body the client gets: the dashboard's error log shows it as is.
            self.metrics.stream_refused(
                refusal.kind, refusal.status, elapsed, self.target, refusal.reason
            )
            self.session.upstream_failed(refusal.status, refusal.reason)
        else:
            self.stream = stream
            elapsed = asyncio.get_running_loop().time() - started
            self.metrics.stream_opened(self.kind, elapsed, self.target)
            self.session.upstream_opened()
        finally:
            self._opening = None
        self._pump()
        held, self._held = self._held, []
        for report in held:  # the client has its answer: now what the upstream said
            report()

    def _end_client(self) -> None:
        """Half-close towards the client; a client already gone is no error here
        (``connection_lost`` tells the rest). A client over TLS cannot be half-closed
        (asyncio's TLS transport has no ``write_eof``): nothing more can reach it, so
        the connection closes in order, the upstream ended rather than reset."""
        transport = self.transport
        if transport is None or self._closed or transport.is_closing():
            return
        if transport.can_write_eof():
            with contextlib.suppress(OSError):
                transport.write_eof()
        else:
            self._close_client(abort=False)

    def _close_client(self, abort: bool) -> None:
        if self.transport is None or self._closed:
            return
        if self.stream is not None:
            (self.stream.abort if abort else self.stream.write_eof)()
        if abort:
            reset_transport(self.transport)
        else:
            self.transport.close()

    def _update_reading(self) -> None:
        """Read the client only while the session wants bytes and the stream has room."""
        want = self.session.wants_client_data and not self._stream_full and self._opening is None
        if want == self._reading or self.transport is None or self._closed:
            return
        self._reading = want
        if want:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def _sync_head_timer(self) -> None:
        """Time the wait for a request head whenever the session waits for one (idle).

        Armed once per wait, never extended by trickling bytes: a client
        sending one byte a second still runs out of time. One timer serves
        many waits: a kept-alive connection waits after every response, and a
        timer armed and cancelled each time cost one per request. The wait's
        start is noted instead; the timer, when it fires, times out the wait
        under way, or re-arms for what is left of it, or (busy) lapses until
        the next wait arms it.
        """
        if not self.session.idle or self._closed:
            self._head_since = None
            return
        loop = asyncio.get_running_loop()
        if self._head_since is None:
            self._head_since = loop.time()
        if self._head_timer is None:
            deadline = self._head_since + self.head_timeout
            self._head_timer = loop.call_at(deadline, self._on_head_timeout)

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self._head_since is None or self._closed:
            return  # busy since: the next wait arms a timer of its own
        loop = asyncio.get_running_loop()
        deadline = self._head_since + self.head_timeout
        # A later wait than the one this timer was armed for (a timer may also fire a
        # little early: the loop's clock resolution).
        if loop.time() + _TIMER_SLACK < deadline:
            self._head_timer = loop.call_at(deadline, self._on_head_timeout)
            return
        self.session.head_timed_out()
        self._pump()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    @property
    def busy(self) -> bool:
        """In the middle of an exchange: opening an upstream, forwarding, or a tunnel."""
        return self._opening is not None or not (self.session.idle or self._closed)

    def close_idle(self) -> None:
        """Close a connection between requests (shutdown): an orderly close, no reset."""
        if self.transport is not None and not self._closed:
            self.transport.close()

    def close(self) -> None:
        """Reset the connection and its upstream (shutdown deadline passed)."""
        if self.stream is not None:
            self.stream.abort()
        if self.transport is not None and not self._closed:
            reset_transport(self.transport)
