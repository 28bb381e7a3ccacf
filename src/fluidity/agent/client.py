"""One local client connection of the agent: a socket, a session, an upstream.

``ClientConnection`` is the asyncio protocol of a socket accepted on the
agent's port. Everything HTTP or SOCKS5 lives in the sans-I/O session (a
``FirstByteSession`` choosing ``ClientSession`` or ``SocksRelay``); this class
only moves bytes in and out of it and carries out the events it emits.

An upstream is a tunnel stream, or, for a host on the ``direct:`` list, a
``DirectStream``: the agent's own connection, with the same interface. The
single task it ever starts is the one that opens an upstream (that waits for
the server or the target); while it runs the client is not read, so the
session never buffers more than one read. The upstream may speak before that
task resumes (a server that greets first: its bytes follow the stream's
acceptance in the same read), so what it reports meanwhile is held and
replayed once the session knows the upstream is open.

Failures are never silent. A tunnel stream that cannot be had answers 503
(no tunnel within ``connect_wait``, or the server's stream limit) or 502; one
that breaks before a response byte answers 502, except that an idempotent
request sent in full is replayed once on the next tunnel when the whole tunnel
died; one that breaks later resets the client connection (TCP RST), so a
close-delimited body or a CONNECT stream cannot pass for complete.

``head_timeout`` bounds every wait for a request head (or a SOCKS5
handshake): the first, and each next one on a kept-alive connection, which is
closed once idle that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol, cast

from fluidity.agent.keeper import TunnelKeeper
from fluidity.config.agent import AgentConfig
from fluidity.errors import (
    PathError,
    StreamError,
    StreamRefused,
    TooManyStreams,
    TunnelError,
    TunnelUnavailable,
)
from fluidity.observe.metrics import Metrics, target_error_kind
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
from fluidity.protocol.routing import SplitRouting
from fluidity.transport.sockopts import reset_transport, set_tcp_keepalive
from fluidity.transport.streams import StreamHandler

log = logging.getLogger(__name__)

_TIMER_SLACK = 0.005  # seconds


class Upstream(Protocol):
    """What a client connection holds: a ``TunnelStream`` or a ``DirectStream``."""

    def write(self, data: bytes) -> bool: ...

    def write_eof(self) -> None: ...

    def acknowledge(self, size: int) -> None: ...

    def abort(self) -> None: ...

    @property
    def tunnel_alive(self) -> bool: ...


class ClientHost(Protocol):
    """What a client connection needs of the agent that accepted it."""

    config: AgentConfig
    keeper: TunnelKeeper
    metrics: Metrics
    routing: SplitRouting
    keepalive_clients: bool

    def forget(self, client: ClientConnection) -> None: ...

    async def open_direct(self, host: str, port: int, handler: StreamHandler) -> Upstream: ...


class ClientConnection(asyncio.Protocol):
    """Drives a session between a local socket and its upstreams."""

    def __init__(self, agent: ClientHost, session: DriverSession) -> None:
        self.agent = agent
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.stream: Upstream | None = None
        self.kind = "idle"
        self._opening: asyncio.Task[None] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_since: float | None = None  # when the current wait for a head began
        self._client_paused = False  # the client's socket buffer is full
        self._stream_full = False  # the tunnel stream's send queue is full
        self._reading = True
        self._deferred_ack = 0
        self._retried = False
        self._closed = False
        self._held: list[Callable[[], None]] = []  # upstream reports while opening

    # -- the client socket --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self.agent.keepalive_clients:
            set_tcp_keepalive(transport)
        self._sync_head_timer()

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if stream is not None and self.session.relaying:
            # A raw splice (CONNECT, upgrades): the session would only hand the
            # bytes back as one SendUpstream. Skipping the round trip through it
            # is the agent's half of turning the connection into a plain splice.
            if not stream.write(data):
                self._stream_full = True
                self._update_reading()
            return
        self.session.receive_client(data)
        self._pump()

    def eof_received(self) -> bool:
        self.session.receive_client(b"")
        self._pump()
        return True  # half-close: the answer may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_head_timer()
        if self._opening is not None:
            self._opening.cancel()
        if self.stream is not None:
            self.stream.abort()
            self.stream = None
        self.agent.forget(self)

    def pause_writing(self) -> None:
        self._client_paused = True

    def resume_writing(self) -> None:
        self._client_paused = False
        if self._deferred_ack and self.stream is not None:
            self.stream.acknowledge(self._deferred_ack)
        self._deferred_ack = 0

    # -- the tunnel stream (StreamHandler) -------------------------------

    def stream_data(self, data: bytes) -> None:
        if self._opening is not None:
            self._held.append(lambda: self.stream_data(data))
            return
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

    def stream_drained(self) -> None:
        self._stream_full = False
        self._update_reading()

    # -- carrying out the session's events ---------------------------------

    def _pump(self) -> None:
        while (event := self.session.next_event()) is not None:
            match event:
                case SendUpstream(data):
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
                case CloseUpstream():
                    if self.stream is not None:
                        self.stream.abort()
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
        try:
            stream = await self._connect(host, port)
        except StreamRefused as exc:
            self._failed(exc.status, exc.reason, target_error_kind(exc.status), started)
        except TunnelUnavailable as exc:
            self._failed(503, str(exc), "no_tunnel", started)
        except TooManyStreams as exc:
            self._failed(503, str(exc), "stream_limit", started)
        except PathError as exc:
            self._failed(exc.status, str(exc), "direct_path", started)
        except (StreamError, TunnelError) as exc:
            self._failed(502, str(exc), "tunnel_error", started)
        else:
            self.stream = stream
            elapsed = asyncio.get_running_loop().time() - started
            self.agent.metrics.stream_opened(self.kind, elapsed)
            self.session.upstream_opened()
        finally:
            self._opening = None
        self._pump()
        held, self._held = self._held, []
        for report in held:  # the client has its answer: now what the upstream said
            report()

    async def _connect(self, host: str, port: int) -> Upstream:
        """A tunnel stream to ``host:port``, or a direct connection if it is on ``direct:``."""
        if self.agent.routing.route(host) == "direct":
            self.kind = "direct"
            return await self.agent.open_direct(host, port, self)
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return await self.agent.keeper.open_stream(authority, self)

    def _failed(self, status: int, reason: str, kind: str, started: float) -> None:
        elapsed = asyncio.get_running_loop().time() - started
        self.agent.metrics.stream_refused(kind, status, elapsed)
        self.session.upstream_failed(status, reason)

    def _end_client(self) -> None:
        """Half-close towards the client; a client already gone is no error here
        (``connection_lost`` tells the rest)."""
        transport = self.transport
        if transport is None or self._closed or transport.is_closing():
            return
        if transport.can_write_eof():
            with contextlib.suppress(OSError):
                transport.write_eof()

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
            timeout = self.agent.config.head_timeout
            self._head_timer = loop.call_at(self._head_since + timeout, self._on_head_timeout)

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self._head_since is None or self._closed:
            return  # busy since: the next wait arms a timer of its own
        loop = asyncio.get_running_loop()
        deadline = self._head_since + self.agent.config.head_timeout
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
