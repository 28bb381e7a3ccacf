"""The server: an mTLS HTTP/2 listener that dials targets for its agents.

Each agent connection is a ``ServerConnection`` (``fluidity.server.connection``:
identity, allow-list, tunnel limit); each CONNECT stream on it is served by the
``StreamService`` (``fluidity.server.streams``: one dial task, then a
``Splice``). This module owns the listeners, the set of live tunnels, reload
and the drain.

TLS is accepted by ``TLSListener`` (each accepted socket handed to
``connect_accepted_socket`` with the TLS context current then, so a reloaded
certificate, CA or CRL reaches the next handshake) so that every failed
handshake is counted by reason and logged once, rate-limited. Its protocol is
the front door's ``Handoff``, which gives each connection to the direct
transport (h2, TLS 1.3, verified client certificate) or to the WebSocket
transport (whose inner mTLS handshake uses the reloadable inner context); the
client allow-list and the tunnel limits apply to the tunnel connection either
way, since both paths end in the same ``ServerConnection``. With ``https_proxy``
on, the front door also hands proxy clients with no agent to the
``HttpsProxyService`` (``fluidity.server.httpsproxy``), which shares the dialer.

Shutdown drains: the listener closes, new streams are refused with
REFUSED_STREAM (the agent retries them elsewhere), open streams finish up to
the deadline, and only then each connection gets its GOAWAY.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from pathlib import Path

from fluidity.config.server import ServerConfig
from fluidity.errors import HandshakeError, TunnelError
from fluidity.lifecycle.cloudwatch import Activity, MetricsPublisher
from fluidity.observe.expiry import DAY, ExpiryWatch, Sources
from fluidity.observe.metrics import Metrics, Snapshot
from fluidity.observe.metricsserver import MetricsServer
from fluidity.protocol.identity import IdentityAllowList
from fluidity.protocol.tunnel import Side
from fluidity.server.connection import ServerConnection, close_revoked
from fluidity.server.console import ServerConsole
from fluidity.server.dialer import Dialer, DialSettings, breaker_of, policy_of
from fluidity.server.httpsproxy import HttpsProxyService
from fluidity.server.listeners import cannot_listen, open_websocket_listener
from fluidity.server.policyreload import ConfigFile, PolicyReloader
from fluidity.server.rebalance import Rebalancer
from fluidity.server.reload import ReloadableContext
from fluidity.server.streams import StreamService
from fluidity.server.tunnels import Tunnels
from fluidity.transport.connection import TunnelConnection
from fluidity.transport.frontdoor import Handoff, ServerContexts, make_link, server_contexts
from fluidity.transport.tlsaccept import FailureLog, TLSListener
from fluidity.transport.wslink import WebSocketLink

log = logging.getLogger(__name__)


class Server:
    """Accepts agents, serves their CONNECT streams, drains on shutdown."""

    def __init__(self, config: ServerConfig, config_file: ConfigFile | None = None) -> None:
        """``config_file``: where ``reload`` reads the config again (None: TLS files only)."""
        self.config = config
        # Every context (the main port's, the inner one of the WebSocket transport,
        # the public one of websocket.cert) is rebuilt together on reload, so the
        # next handshake on any path uses the new material.
        self.tls: ReloadableContext[ServerContexts] = ReloadableContext(
            lambda: server_contexts(config),
            _watched_paths(config),
            on_reloaded=self._tls_reloaded,
        )
        self.clients = IdentityAllowList.from_config(config.clients.allow)
        self.metrics = Metrics("server")
        dialer = Dialer(policy_of(config), DialSettings.of(config), breaker_of(config))
        self.streams = StreamService(dialer, self.metrics)
        # The server as an HTTPS proxy for clients with no agent (https_proxy: opt-in).
        self.https_proxy = (
            HttpsProxyService(config, dialer, self.metrics, self.clients, self._handoff_refused)
            if config.https_proxy.enabled
            else None
        )
        # One rate budget for every failed handshake, whichever listener or layer saw it.
        self.failures = FailureLog()
        self.acceptor = TLSListener(
            lambda: self.tls.current.main,
            self._make_handoff,
            config.limits.handshake_timeout,
            failures=self.failures,
            on_failure=self.metrics.handshake_failed,
        )
        self._started = False
        self._watcher: asyncio.Task[None] | None = None
        self.tunnels = Tunnels(self.metrics, lambda: self.config.limits.max_tunnels)
        self._connections = self.tunnels.live
        self._draining = False
        self._publisher: asyncio.Task[None] | None = None
        self.address: tuple[str, int] | None = None
        self.websocket_address: tuple[str, int] | None = None
        self._websocket_listener: TLSListener | asyncio.Server | None = None
        self.metrics.watch(self._snapshot)
        self.started = time.time()
        self.console = ServerConsole(self)  # the dashboard at / of metrics: (server.console)
        self.rebalancer: Rebalancer | None = None
        if config.rebalance.enabled:
            self.rebalancer = Rebalancer(config.rebalance, self._connections.copy)
        self.expiry = ExpiryWatch(lambda: _expiring(config), config.tls.expiry_warning_days * DAY)
        self.metrics.watch_expiry(self.expiry.seconds_left)
        self.policy = PolicyReloader(self, config_file) if config_file is not None else None
        self._upkeep: list[asyncio.Task[None]] = []
        self.metrics_server = (
            MetricsServer(self.metrics, config.metrics, dashboard=self.console.view)
            if config.metrics is not None
            else None
        )

    @property
    def contexts(self) -> ServerContexts:
        """The TLS contexts the next handshakes use (main port, inner, public)."""
        return self.tls.current

    @property
    def context(self) -> ssl.SSLContext:
        """The TLS context the next agent handshake on the main port uses."""
        return self.tls.current.main

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Reload certificate, key, CA and CRL (and ``websocket.cert``/``key``) for new
        connections on every path, then the policy from the config file (see
        ``fluidity.server.policyreload``); False if either kept its old state."""
        tls = self.tls.reload(reason)
        return (self.policy.reload(reason) if self.policy is not None else True) and tls

    def live_connections(self) -> list[ServerConnection]:
        """The tunnel connections admitted and not yet closed."""
        return list(self._connections)

    async def start(self) -> None:
        """Bind the listener; ``address`` then holds the bound host and port."""
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        if self.metrics_server is not None:
            await self.metrics_server.start()
            self.console.start()
        # The acceptor runs each TLS handshake with the context current at that
        # moment (hot reload) and logs each failure as one line.
        try:
            self.address = await self.acceptor.start(listen.host, listen.port)
        except OSError as exc:
            raise cannot_listen("listen", listen, exc) from exc
        if self.config.tls.reload_interval > 0:
            self._watcher = loop.create_task(
                self.tls.watch(self.config.tls.reload_interval), name="tls-reload-watch"
            )
        self._start_upkeep(loop)
        self._started = True
        if self.rebalancer is not None:
            self.rebalancer.start()
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
        if self.https_proxy is not None:
            log.info("HTTPS proxy on the same port: %s", self.https_proxy.admits)
        if self.config.websocket.listen is not None:
            secure = self.contexts.websocket is not None
            self._websocket_listener, self.websocket_address = await open_websocket_listener(
                self.config,
                self._websocket_context if secure else None,
                self._make_link,
                self.failures,
                self.metrics,
            )

    def _start_upkeep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Expiry warnings now and every few hours; the config file's watcher."""
        self.expiry.refresh_and_check()
        self._upkeep.append(loop.create_task(self.expiry.run(), name="expiry-check"))
        interval = self.config.tls.reload_interval
        if self.policy is not None and interval > 0:
            self._upkeep.append(loop.create_task(self.policy.watch(interval), name="config-watch"))

    def _websocket_context(self) -> ssl.SSLContext:
        context = self.tls.current.websocket
        assert context is not None, "websocket.cert is set, so its context is built"
        return context

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain within ``drain_timeout``."""
        if not self._started:
            await self.start()
        await stop.wait()
        await self.shutdown()

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let open streams finish up to the deadline, then close all."""
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        started = time.monotonic()
        self._draining = True
        if self._publisher is not None:
            self._publisher.cancel()
        if self.rebalancer is not None:
            self.rebalancer.close()
        self.acceptor.close()
        if self._websocket_listener is not None:
            self._websocket_listener.close()
        if self._watcher is not None:
            self._watcher.cancel()
        for task in self._upkeep:
            task.cancel()
        for conn in list(self._connections):
            conn.refuse_new_streams()
        log.info("draining: %d streams open, waiting up to %.0f s", self._open_streams(), timeout)
        try:
            async with asyncio.timeout(timeout):
                # Streams end in protocol callbacks; a short poll keeps them free of
                # shutdown bookkeeping on the hot path.
                while (  # noqa: ASYNC110
                    not self._proxy_drained() or self._open_streams() or self.streams.dials
                ):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning(
                "drain deadline passed with %d streams open: closing them", self._open_streams()
            )
        self.streams.abort()
        if self.https_proxy is not None:
            self.https_proxy.close()
        # GOAWAY and TLS close to every agent at once, and wait for them (bounded):
        # a server that returned now would leave sockets open behind it.
        await asyncio.gather(
            *(conn.finish("server shutting down") for conn in list(self._connections))
        )
        await asyncio.gather(*self._upkeep, return_exceptions=True)
        await self.acceptor.wait_closed()
        if self._websocket_listener is not None:
            await self._websocket_listener.wait_closed()
        if self.metrics_server is not None:
            await self.console.close()
            await self.metrics_server.close()
        log.info("drained in %.2f s", time.monotonic() - started)

    def activity(self) -> Activity:
        """Active agents, active streams and the last time a stream opened."""
        tunnels = self.tunnels.activity()
        proxies = len(self.https_proxy.connections) if self.https_proxy is not None else 0
        return Activity(
            tunnels.active_connections + proxies, tunnels.active_streams, tunnels.last_activity
        )

    # -- what the dashboard reads (fluidity.server.console) ----------------

    @property
    def draining(self) -> bool:
        return self._draining

    def snapshot(self) -> Snapshot:
        return self._snapshot()

    # -- live tunnels, and the connections the listeners make ------------

    def _open_streams(self) -> int:
        return self.tunnels.open_streams()

    def _snapshot(self) -> Snapshot:
        """Live state for a metrics scrape."""
        received, sent = self.tunnels.bytes()
        circuits: dict[str, int] = {}
        for state in self.streams.dialer.breaker.states(time.monotonic()).values():
            circuits[state.value] = circuits.get(state.value, 0) + 1
        return Snapshot(
            tunnel_connections=len(self._connections),
            streams_active={"connect": self._open_streams()},
            bytes_received=received,
            bytes_sent=sent,
            circuits=circuits,
        )

    def _tls_reloaded(self) -> None:
        """After a TLS reload: end the live tunnels and HTTPS proxy connections whose
        client certificate the CRL now lists, and check the new files' expiry dates."""
        crl = self.config.tls.crl
        proxies = self.https_proxy.connections if self.https_proxy is not None else set()
        if crl is not None and (self._connections or proxies):
            close_revoked([*self._connections, *proxies], crl)
        self.expiry.refresh_and_check()

    def _make_handoff(self) -> Handoff:
        make_link = self._make_link if self.config.websocket.enabled else None
        make_proxy = self.https_proxy.make if self.https_proxy is not None else None
        return Handoff(
            self._make_connection,
            make_link,
            self._handoff_refused,
            make_proxy,
            self.config.limits.handshake_timeout,
        )

    def _proxy_drained(self) -> bool:
        return self.https_proxy is None or self.https_proxy.drained()

    def _handoff_refused(self, peer: str, problem: HandshakeError) -> None:
        """The main port turned a connection away right after its TLS handshake (h2
        without a client certificate, or over TLS 1.2): a failed handshake of that port."""
        self.acceptor.refused(peer, problem.reason, str(problem))

    def _refused(self, peer: str, problem: TunnelError) -> None:
        """A WebSocket transport connection whose inner handshake failed: logged and
        counted like a failed handshake, by the same reasons."""
        reason = problem.reason if isinstance(problem, HandshakeError) else "tls_error"
        self.metrics.handshake_failed(reason)
        self.failures.failed(peer, reason, str(problem) or type(problem).__name__)

    def _make_connection(self) -> TunnelConnection:
        conn = ServerConnection(
            self,
            Side.SERVER,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_timeout=self.config.keepalive_timeout,
            max_streams=self.config.limits.max_streams_per_tunnel,
            stream_idle_timeout=self.config.limits.stream_idle_timeout,
            on_stream_request=self.streams.on_stream_request,
        )
        return conn

    def _make_link(self) -> WebSocketLink:
        """A WebSocket transport connection; its inner TLS uses the context current now."""
        return make_link(self.config, self.tls.current.inner, self._make_connection, self._refused)

    def admit(self, conn: ServerConnection) -> bool:
        """Register a connection whose client is allowed (see ``Tunnels.admit``)."""
        return self.tunnels.admit(conn, draining=self._draining)

    def forget(self, conn: ServerConnection) -> None:
        """A connection closed (see ``Tunnels.forget``)."""
        self.tunnels.forget(conn)


def _watched_paths(config: ServerConfig) -> list[Path]:
    """The files a reload rereads: the TLS material and the public WebSocket certificate."""
    tls, ws = config.tls, config.websocket
    sources = (tls.ca, tls.cert, tls.key, tls.crl, ws.cert, ws.key)
    return [source.path for source in sources if source and source.path]


def _expiring(config: ServerConfig) -> Sources:
    """What the expiry warnings watch: the certificate, the CA and the CRL."""
    tls = config.tls
    return (("server", tls.cert), ("ca", tls.ca), ("crl", tls.crl))
