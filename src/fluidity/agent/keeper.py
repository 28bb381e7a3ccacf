"""Keeps the agent's one tunnel connection up, forever.

The keeper connects at start, and whenever the connection is lost -- server
restart, network reset, a middlebox killing an idle connection, a laptop
waking from sleep (a jump of the clocks, or the keepalive PING) -- it reconnects with
exponential backoff and full jitter, logging each attempt and its reason.

Each attempt is a :class:`fluidity.agent.dialer.TunnelDialer` dial: the TCP
path (through the ``upstream_proxy:`` if any, a PAC file evaluated again on
each attempt), TLS, and the server's first HTTP/2 word, all within
``handshake_timeout``. A connection the server closes before that first word
refused our certificate: the attempt is reported as an authentication failure.

Client requests wait for the tunnel (``connect_wait``) instead of failing
the moment it blinks, and a waiting request does not wait for the backoff
timer: it starts an attempt at once (one at a time, one every 0.5 s at most,
the backoff left as it was; :mod:`fluidity.agent.redial`). A jump of the clocks
(the machine slept) starts one at once too, and retires a connection made
before the sleep the way a draining server's is retired.

A draining server (shutting down) refuses new streams with REFUSED_STREAM
while its open ones finish. The first refusal retires the connection: the
keeper connects again at once -- behind a load balancer, most likely to a
server that is not going away -- and the retired connection carries its
streams to their end.

The connection goes over the direct transport or the WebSocket transport
(``fluidity.agent.routes``). With ``transport: auto`` the keeper starts direct
and, the first time the direct transport meets TLS inspection, switches to the
WebSocket transport for good, saying so once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from enum import Enum
from typing import Any

from fluidity.agent.dialer import TunnelDialer, failure_reason
from fluidity.agent.path import open_path
from fluidity.agent.redial import Redialer
from fluidity.agent.routes import Connector, WebSocketSettings
from fluidity.config.agent import TransportKind
from fluidity.errors import (
    AuthenticationError,
    FluidityError,
    StreamUnprocessed,
    TLSInspectionDetected,
    TunnelClosed,
    TunnelError,
    TunnelUnavailable,
)
from fluidity.observe.metrics import Metrics
from fluidity.protocol.retry import Backoff
from fluidity.transport.connection import TunnelConnection
from fluidity.transport.streams import StreamHandler, TunnelStream

log = logging.getLogger(__name__)


class TunnelState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    AUTH_FAILED = "auth failed"
    STOPPED = "stopped"


class TunnelKeeper:
    """Owns the agent's tunnel connection and hands it to client sessions."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        server_name: str,
        context: ssl.SSLContext,
        cert_description: str,
        keepalive_interval: float = 15.0,
        keepalive_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        connect_wait: float = 10.0,
        stream_idle_timeout: float = 0.0,
        backoff: Backoff | None = None,
        connector: Connector | None = None,
        metrics: Metrics | None = None,
        ca_pem: bytes = b"",
        transport: TransportKind = "direct",
        websocket: WebSocketSettings | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.server_name = server_name
        self.connect_wait = connect_wait
        self._backoff = backoff or Backoff(0.5, 30.0)
        self.redial = Redialer(self._backoff)
        """When attempts are made: the backoff timer, waiting requests, wakes from sleep."""
        if transport != "direct" and websocket is None:
            raise ValueError(f"transport {transport!r} needs WebSocket settings")
        self._dialer = TunnelDialer(
            port=port,
            server_name=server_name,
            context=context,
            cert_description=cert_description,
            connector=connector or functools.partial(open_path, None),
            keepalive_interval=keepalive_interval,
            keepalive_timeout=keepalive_timeout,
            handshake_timeout=handshake_timeout,
            stream_idle_timeout=stream_idle_timeout,
            ca_pem=ca_pem,
            websocket=websocket,
        )
        self.transport_mode: TransportKind = transport
        self.transport: str = "websocket" if transport == "websocket" else "direct"
        """The transport in use: ``direct`` or ``websocket`` (``auto`` starts direct)."""
        self._last_failure: TunnelError | None = None
        self._failed = asyncio.Event()
        self._conn: TunnelConnection | None = None
        self._up = asyncio.Event()
        self._draining = asyncio.Event()  # the current connection refused a stream
        self._retire_why = ""  # why the current connection is retired, if not a drain
        self._retired: set[TunnelConnection] = set()  # draining, still carrying streams
        self.state = TunnelState.CONNECTING
        self.last_error = ""
        self.reconnects = 0
        self.connected_since: float | None = None
        self.metrics = metrics or Metrics("agent")
        # Payload bytes of the connections that are gone, so totals survive reconnects.
        self.closed_bytes_in = 0
        self.closed_bytes_out = 0
        self._started: float | None = None  # loop time of run(); None once the tunnel was up

    @property
    def bytes_in(self) -> int:
        """Stream payload bytes received over every connection since the keeper started."""
        conn = self._conn
        return self.closed_bytes_in + (conn.bytes_in if conn is not None else 0)

    @property
    def bytes_out(self) -> int:
        """Stream payload bytes sent over every connection since the keeper started."""
        conn = self._conn
        return self.closed_bytes_out + (conn.bytes_out if conn is not None else 0)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connection(self) -> TunnelConnection | None:
        return self._conn

    async def run(self) -> None:
        """Connect, and reconnect after every loss, until cancelled."""
        self._started = asyncio.get_running_loop().time()
        log.info("waiting for the tunnel to server %s…", self.address)
        watch = asyncio.ensure_future(self.redial.watch_sleep(self._slept))
        try:
            while True:
                await self.connect_once()
                self._log_next_attempt(self.redial.attempt_ended())
                await self.redial.until_next_attempt()
                self.reconnects += 1
                self.metrics.reconnecting()
        finally:
            watch.cancel()
            await asyncio.wait([watch])  # never raises: the watch leaves with us
            self.state = TunnelState.STOPPED
            self._up.clear()
            # GOAWAY, then wait (bounded) for each TLS close to complete: the
            # agent's shutdown leaves no socket open behind it.
            closing = [conn for conn in (self._conn, *self._retired) if conn is not None]
            await asyncio.gather(*(conn.finish("agent stopping") for conn in closing))

    def reconnect_now(self) -> None:
        """Start a connection attempt at once (the dashboard's button): a live connection
        is closed with GOAWAY (its streams fail, as on any loss) and the backoff wait,
        if one is under way, is cut short. An attempt in progress finishes first."""
        self.redial.woke()  # as after a sleep: the backoff starts over, the next attempt is now
        conn = self._conn
        if conn is not None and not conn.closed.done():
            conn.close("reconnect requested")

    async def wait_ready(self, within: float) -> TunnelConnection:
        """The usable connection, waiting up to ``within`` seconds for one."""
        conn = self._conn
        if conn is not None and conn.is_usable and self._up.is_set():
            return conn  # the common case, without arming a timeout for nothing
        try:
            with self.redial.waiting():
                return await self._until_ready(within)
        except TimeoutError:
            why = f": {self.last_error}" if self.last_error else ""
            raise TunnelUnavailable(
                f"no tunnel to {self.address} after waiting {within:g} s{why}"
            ) from None

    async def _until_ready(self, within: float) -> TunnelConnection:
        async with asyncio.timeout(within):
            while True:
                conn = self._conn
                if conn is not None and conn.is_usable and self._up.is_set():
                    return conn
                self._up.clear()
                await self._up.wait()

    async def failure(self, within: float) -> TunnelError:
        """Why the latest connection attempt failed, waiting up to ``within`` seconds for
        the attempt under way to fail; ``TimeoutError`` if none does."""
        async with asyncio.timeout(within):
            while self._last_failure is None:
                self._failed.clear()
                await self._failed.wait()
        return self._last_failure

    async def open_stream(self, authority: str, handler: StreamHandler) -> TunnelStream:
        """A stream to ``authority``; waits for the tunnel, retries a refused or lost open.

        A stream refused with REFUSED_STREAM (the server is draining) or lost
        with its connection before the server answered never reached a target,
        so trying it again on the next connection is safe.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_wait
        refused: FluidityError | None = None  # why the last stream could not be opened
        while True:
            try:
                conn = await self.wait_ready(max(deadline - loop.time(), 0.0))
            except TunnelUnavailable as exc:
                if refused is None:
                    raise
                raise TunnelUnavailable(f"{exc}; before that: {refused}") from refused
            try:
                return await conn.open_stream(authority, handler)
            except (TunnelClosed, StreamUnprocessed) as exc:
                conn.goaway_received = True  # stop using it for new streams
                self._up.clear()
                if isinstance(exc, StreamUnprocessed) and conn is self._conn:
                    self._draining.set()
                refused = exc

    async def dial_extra(self) -> TunnelConnection:
        """One more connection to the same server, on the transport in use: for
        ``fluidity.agent.pool`` when this one is full. Not kept by the keeper.

        Raises the attempt's ``TunnelError``.
        """
        return await self._dialer.dial(self.host, self.transport)

    async def connect_once(self) -> None:
        """One attempt: connect, then carry the connection until it is lost.

        Returns when the attempt failed (``last_error`` says why, and the failure
        is counted by reason), the connection ended, or its server began to drain
        (the connection is then retired); ``run`` calls it in a loop. ``state``
        tells the last outcome while attempts go on: AUTH_FAILED stays until an
        attempt fails otherwise or succeeds. The backoff starts over after a
        connection that worked, not after one the server turned away.
        """
        conn = await self._attempt()
        if conn is None and self._switch_after_inspection():
            conn = await self._attempt()
        if conn is None:
            return
        self._conn = conn
        self.state = TunnelState.CONNECTED
        self.connected_since = time.time()
        self.last_error = ""
        self.metrics.connection_made()
        self._up.set()
        self._report_up()
        drained = await self._until_closed_or_draining(conn)
        self._up.clear()
        self._conn = None
        self.state = TunnelState.CONNECTING
        self.connected_since = None
        if drained:
            why, self._retire_why = self._retire_why, ""
            self._retire(conn, why or f"server {self.address} is draining")
            self._backoff.reset()
            self.last_error = why or "the server is draining (shutting down)"
            return
        self._count_bytes(conn)
        reason = conn.closed.result()
        if conn.refused_by_peer:
            # Turned away (too many tunnels...): a failure like any other; backoff grows.
            self.last_error = f"the server refused the tunnel ({reason})"
            return
        self._backoff.reset()  # it was a good connection: start over from the shortest wait
        self.last_error = f"connection lost ({reason})"

    async def _until_closed_or_draining(self, conn: TunnelConnection) -> bool:
        """Wait until ``conn`` closes (False) or refuses a stream as it drains (True)."""
        self._draining.clear()
        self._retire_why = ""
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            either: list[asyncio.Future[Any]] = [conn.closed, draining]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            draining.cancel()
        return not conn.closed.done()

    def _retire(self, conn: TunnelConnection, why: str) -> None:
        """Leave a draining connection to finish its streams; count it once closed."""
        log.info(
            "%s: %d streams finish on the old tunnel, new ones go on a new one",
            why,
            conn.active_streams,
        )
        self._retired.add(conn)

        def closed(_: object) -> None:
            self._retired.discard(conn)
            self._count_bytes(conn)

        conn.closed.add_done_callback(closed)

    def _count_bytes(self, conn: TunnelConnection) -> None:
        """Fold a finished connection's byte counts into the totals."""
        self.closed_bytes_in += conn.bytes_in
        self.closed_bytes_out += conn.bytes_out

    async def _attempt(self) -> TunnelConnection | None:
        """One attempt on the current transport; None (and ``last_error``) if it failed."""
        self._last_failure = None
        try:
            return await self._dialer.dial(self.host, self.transport)
        except TunnelError as exc:
            self.last_error = str(exc)
            self._last_failure = exc
            self._failed.set()
            self.metrics.handshake_failed(failure_reason(exc), str(exc), self.address)
            if isinstance(exc, AuthenticationError):
                self.state = TunnelState.AUTH_FAILED
                log.error("%s", exc)
            else:
                self.state = TunnelState.CONNECTING
            return None

    def _switch_after_inspection(self) -> bool:
        """``transport: auto``: after TLS inspection on the direct transport, use the
        WebSocket transport from now on (and say so, once)."""
        inspected = isinstance(self._last_failure, TLSInspectionDetected)
        if not (inspected and self.transport_mode == "auto" and self.transport == "direct"):
            return False
        log.warning("%s; transport is auto: switching to the WebSocket transport", self.last_error)
        self.transport = "websocket"
        return True

    def _log_next_attempt(self, delay: float | None) -> None:
        """Say when the next attempt is; quietly for one made for waiting requests."""
        if delay is None:
            log.debug(
                "tunnel to %s: %s; the requests waiting ask again", self.address, self.last_error
            )
            return
        log.warning(
            "tunnel to %s: %s; reconnecting in %.1f s (attempt %d)",
            self.address,
            self.last_error,
            delay,
            self._backoff.attempts,
        )

    def _slept(self, seconds: float) -> None:
        """The clocks jumped (the machine slept): try afresh now, whatever was going on.

        A connection made before the sleep is retired, not cut: its streams finish on
        it if it still works, new ones go on a new connection.
        """
        log.warning(
            "the clocks jumped %.0f s (the machine slept?): reconnecting to %s at once",
            seconds,
            self.address,
        )
        self.redial.woke()
        if self._conn is not None:
            self._retire_why = f"the machine slept {seconds:.0f} s"
            self._draining.set()

    def _report_up(self) -> None:
        """'tunnel up after 0.4 s' the first time, for the person waiting at start."""
        via = f"{self.transport} transport"
        if self._started is None:
            log.info("tunnel up: connected to %s (%s)", self.address, via)
            return
        waited = asyncio.get_running_loop().time() - self._started
        self._started = None
        log.info("tunnel up after %.1f s: connected to %s (%s)", waited, self.address, via)
