"""The server: an mTLS HTTP/2 listener that dials targets for its agents.

Each agent connection is a ``TunnelConnection``; each CONNECT stream on it
becomes one dial task (policy, resolution, retries, circuit breaker) and, once
the target answers, a ``Splice`` that carries bytes with no task at all.

TLS is accepted by ``TLSAcceptor`` (plain TCP upgraded with ``start_tls``)
so that every failed handshake is logged once with its reason and counted.

Shutdown drains: the listener closes, new streams are refused with
REFUSED_STREAM (the agent retries them elsewhere), open streams finish up to
the deadline, and only then each connection gets its GOAWAY.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from fluidity.config import Address, ServerConfig
from fluidity.connection import TunnelConnection
from fluidity.dialer import Dialer, DialSettings
from fluidity.errors import HandshakeError, StreamError, TargetError, TunnelError
from fluidity.frontdoor import Handoff, make_link, server_contexts
from fluidity.lifecycle.cloudwatch import MetricsPublisher
from fluidity.metrics import Metrics, Snapshot
from fluidity.metricsserver import MetricsServer
from fluidity.protocol.policy import TargetPolicy
from fluidity.protocol.retry import CircuitBreaker
from fluidity.protocol.tunnel import Side
from fluidity.splice import Splice
from fluidity.tlsaccept import TLSAcceptor
from fluidity.wslink import WebSocketLink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Activity:
    """What the server is doing, for operators and the lifecycle control plane."""

    active_connections: int
    active_streams: int
    last_activity: float


class Server:
    """Accepts agents, serves their CONNECT streams, drains on shutdown."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.contexts = server_contexts(config)
        self.context: ssl.SSLContext = self.contexts.main
        policy = TargetPolicy.from_config(
            config.targets.allow, config.targets.deny, config.targets.ports
        )
        self.dialer = Dialer(
            policy,
            DialSettings(
                connect_timeout=config.dial.connect_timeout,
                attempts=config.dial.attempts,
                backoff_initial=config.dial.backoff_initial,
                backoff_max=config.dial.backoff_max,
            ),
            CircuitBreaker(config.circuit_breaker.failures, config.circuit_breaker.reset_after),
        )
        self._listener: asyncio.Server | None = None
        self._connections: set[TunnelConnection] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._dials: set[asyncio.Task[None]] = set()
        self._splices: set[Splice] = set()
        self._last_activity = time.time()
        self._closed_bytes = (0, 0)  # (in, out) of connections gone, for monotonic counters
        self._publisher: asyncio.Task[None] | None = None
        self.address: tuple[str, int] | None = None
        self.websocket_address: tuple[str, int] | None = None
        self._websocket_listener: asyncio.Server | None = None
        self.metrics = Metrics("server")
        self.metrics.watch(self._snapshot)
        self.metrics_server = (
            MetricsServer(self.metrics, config.metrics) if config.metrics is not None else None
        )

    async def start(self) -> None:
        """Bind the listener; ``address`` then holds the bound host and port."""
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        if self.metrics_server is not None:
            await self.metrics_server.start()
        self._listener = await loop.create_server(
            lambda: self._make_acceptor(self.context, self._make_handoff),
            listen.host,
            listen.port,
            backlog=1024,
        )
        sockname = self._listener.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        if self.config.cloudwatch is not None:
            publisher = MetricsPublisher(self.config.cloudwatch)
            self._publisher = loop.create_task(publisher.run(self.activity), name="cloudwatch")
        log.info(
            "fluidity server listening on %s:%d (TLS 1.3, client certificates required%s)",
            *self.address,
            f"; WebSocket transport at {self.config.websocket.path}"
            if self.config.websocket.enabled
            else "",
        )
        if self.config.websocket.listen is not None:
            await self._start_websocket_listener(self.config.websocket.listen)

    async def _start_websocket_listener(self, listen: Address) -> None:
        """The ``websocket.listen`` listener: the WebSocket transport alone, over TLS with
        ``websocket.cert`` or plain HTTP behind a TLS-terminating load balancer."""
        context = self.contexts.websocket
        factory: Callable[[], asyncio.BaseProtocol] = self._make_link
        if context is not None:
            # The link is a buffered protocol that takes data_received too, as the
            # acceptor's replay of held bytes needs.
            link = cast(Callable[[], asyncio.Protocol], self._make_link)
            factory = lambda: self._make_acceptor(context, link)  # noqa: E731
        self._websocket_listener = await asyncio.get_running_loop().create_server(
            factory, listen.host, listen.port, backlog=1024
        )
        sockname = self._websocket_listener.sockets[0].getsockname()
        self.websocket_address = (sockname[0], sockname[1])
        log.info(
            "fluidity server: WebSocket transport on %s:%d at %s (%s)",
            *self.websocket_address,
            self.config.websocket.path,
            "TLS with websocket.cert" if context else "plain HTTP, for a TLS-terminating proxy",
        )

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain within ``drain_timeout``."""
        if self._listener is None:
            await self.start()
        await stop.wait()
        await self.shutdown()

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let open streams finish up to the deadline, then close all."""
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        started = time.monotonic()
        if self._publisher is not None:
            self._publisher.cancel()
        for listener in (self._listener, self._websocket_listener):
            if listener is not None:
                listener.close()
        for task in list(self._handshakes):
            task.cancel()
        for conn in list(self._connections):
            conn.refuse_new_streams()
        log.info("draining: %d streams open, waiting up to %.0f s", self._open_streams(), timeout)
        try:
            async with asyncio.timeout(timeout):
                # Streams end in protocol callbacks; a short poll keeps them free of
                # shutdown bookkeeping on the hot path.
                while self._open_streams() or self._dials:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning(
                "drain deadline passed with %d streams open: closing them", self._open_streams()
            )
        for task in list(self._dials):
            task.cancel()
        for splice in list(self._splices):
            splice.close()
        for conn in list(self._connections):
            conn.close("server shutting down")
        for listener in (self._listener, self._websocket_listener):
            if listener is not None:
                await listener.wait_closed()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        log.info("drained in %.2f s", time.monotonic() - started)

    def activity(self) -> Activity:
        """Active agents, active streams and the last time a stream opened."""
        last = max([self._last_activity, *(c.last_activity for c in self._connections)])
        return Activity(len(self._connections), self._open_streams(), last)

    # -- connections and streams ------------------------------------------

    def _open_streams(self) -> int:
        return sum(conn.active_streams for conn in self._connections)

    def _snapshot(self) -> Snapshot:
        """Live state for a metrics scrape."""
        closed_in, closed_out = self._closed_bytes
        circuits: dict[str, int] = {}
        for state in self.dialer.breaker.states(time.monotonic()).values():
            circuits[state.value] = circuits.get(state.value, 0) + 1
        return Snapshot(
            tunnel_connections=len(self._connections),
            streams_active={"connect": self._open_streams()},
            bytes_received=closed_in + sum(c.bytes_in for c in self._connections),
            bytes_sent=closed_out + sum(c.bytes_out for c in self._connections),
            circuits=circuits,
        )

    def _make_acceptor(
        self, context: ssl.SSLContext, factory: Callable[[], asyncio.Protocol]
    ) -> TLSAcceptor:
        return TLSAcceptor(
            context,
            self.config.limits.handshake_timeout,
            factory,
            self._handshake_failed,
            self._handshakes,
        )

    def _make_handoff(self) -> Handoff:
        make_link = self._make_link if self.config.websocket.enabled else None
        return Handoff(self._make_connection, make_link, self._refused)

    def _refused(self, peer: str, problem: TunnelError) -> None:
        """A connection refused after its TLS handshake (no client certificate on the
        direct transport, or a failed inner handshake on the WebSocket transport):
        logged and counted like a failed handshake, by the same reasons."""
        reason = problem.reason if isinstance(problem, HandshakeError) else "tls_error"
        self._handshake_failed(peer, reason, problem)

    def _handshake_failed(self, peer: str, reason: str, exc: BaseException) -> None:
        self.metrics.handshake_failed(reason)
        # Scanners and dropped connections are routine; certificate trouble is news.
        level = logging.DEBUG if reason in ("not_tls", "connection_lost") else logging.INFO
        log.log(level, "TLS handshake from %s failed (%s): %s", peer, reason, _describe(exc))

    def _make_connection(self) -> TunnelConnection:
        conn = _ServerConnection(
            self,
            Side.SERVER,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_timeout=self.config.keepalive_timeout,
            max_streams=self.config.limits.max_streams_per_tunnel,
            on_stream_request=self._on_stream_request,
        )
        return conn

    def _make_link(self) -> WebSocketLink:
        return make_link(self.config, self.contexts.inner, self._make_connection, self._refused)

    def _admit(self, conn: TunnelConnection) -> bool:
        if len(self._connections) >= self.config.limits.max_tunnels:
            log.warning(
                "refusing agent %s: limits.max_tunnels (%d) reached",
                conn.peer_name,
                self.config.limits.max_tunnels,
            )
            return False
        self._connections.add(conn)
        self.metrics.connection_made()
        return True

    def _forget(self, conn: TunnelConnection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            closed_in, closed_out = self._closed_bytes
            self._closed_bytes = (closed_in + conn.bytes_in, closed_out + conn.bytes_out)
        self._last_activity = max(self._last_activity, conn.last_activity)

    def _on_stream_request(self, conn: TunnelConnection, stream_id: int, authority: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._serve_stream(conn, stream_id, authority)
        )
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    async def _serve_stream(self, conn: TunnelConnection, stream_id: int, authority: str) -> None:
        splice = Splice(on_close=self._splices.discard)
        started = time.monotonic()
        try:
            transport, _ = await self.dialer.dial(authority, lambda: splice)
        except TargetError as exc:
            log.info("%s: CONNECT %s -> %d: %s", conn.peer_name, authority, exc.status, exc)
            self.metrics.stream_refused(exc.kind, exc.status, time.monotonic() - started)
            conn.reject(stream_id, exc.status, str(exc))
            return
        try:
            stream = conn.accept(stream_id, splice)
        except StreamError:
            transport.abort()  # the agent gave up while we dialled
            return
        self._splices.add(splice)
        splice.attach(stream)
        self.metrics.stream_opened("connect", time.monotonic() - started)
        log.debug("%s: CONNECT %s -> 200", conn.peer_name, authority)


class _ServerConnection(TunnelConnection):
    """A tunnel connection that registers itself with its server."""

    def __init__(self, server: Server, side: Side, **kwargs: object) -> None:
        super().__init__(side, **kwargs)  # type: ignore[arg-type]
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        cert = transport.get_extra_info("peercert") or {}
        self.peer_name = f"{_common_name(cert) or 'agent'}@{peer[0]}:{peer[1]}" if peer else "agent"
        super().connection_made(transport)
        if not self._server._admit(self):
            self.close("too many tunnels")
            return
        kind = transport.get_extra_info("fluidity_transport") or "direct"
        forwarded = transport.get_extra_info("forwarded_for")
        via = f", forwarded for {forwarded}" if forwarded else ""
        log.info("agent connected: %s (%s transport%s)", self.peer_name, kind, via)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._server._forget(self)
        log.info("agent disconnected: %s (%s)", self.peer_name, self.closed.result())


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _common_name(cert: dict[str, object]) -> str | None:
    for rdn in cert.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
