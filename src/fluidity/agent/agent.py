"""The agent: a local HTTP and SOCKS5 proxy whose connections ride the one tunnel.

Hosts on the ``direct:`` list are the exception: the agent connects to them
itself (:mod:`fluidity.agent.direct`). With ``upstream_proxy:`` both the tunnel and
those direct connections go out through the corporate proxy
(:mod:`fluidity.agent.path`). The agent also serves its split routing to browsers as a
PAC file at ``/proxy.pac``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from types import MappingProxyType
from typing import Any

from fluidity import __version__
from fluidity.agent.client import ClientConnection
from fluidity.agent.console import AgentConsole
from fluidity.agent.direct import DirectStream
from fluidity.agent.keeper import TunnelKeeper, TunnelState
from fluidity.agent.listener import BatchListener
from fluidity.agent.listener import listen as listen_on
from fluidity.agent.local import (
    Refuser,
    describe_routes,
    host_header_name,
    is_loopback,
    loop_name,
    metrics_url,
    proxy_credentials,
)
from fluidity.agent.path import Streams, open_path
from fluidity.agent.pool import TunnelPool
from fluidity.agent.routes import Connector, WebSocketSettings
from fluidity.config.agent import AgentConfig
from fluidity.errors import ConfigError, LifecycleError, ProxyProtocolError
from fluidity.lifecycle.client import ControlPlaneClient
from fluidity.observe.expiry import DAY, ExpiryWatch
from fluidity.observe.metrics import Metrics, Snapshot
from fluidity.observe.metricsserver import MetricsServer
from fluidity.protocol.dispatch import FirstByteSession, SocksRelay
from fluidity.protocol.proxy import ClientSession, LocalRequest, LocalResponse
from fluidity.protocol.proxyroute import mask_url
from fluidity.protocol.retry import Backoff
from fluidity.transport.streams import StreamHandler
from fluidity.transport.tls import agent_context, describe, outer_agent_context

log = logging.getLogger(__name__)

STATUS_PATH = "/fluidity/status"
PAC_PATH = "/proxy.pac"
PAC_TYPE = "application/x-ns-proxy-autoconfig"
CLOSE_GRACE = 2.0  # seconds the server has to answer the tunnel's TLS close on shutdown
# Connections the kernel queues before the agent accepts them (capped by
# net.core.somaxconn): room for a burst of a thousand clients at once.
LISTEN_BACKLOG = 4096


class Agent:
    """Listens locally, keeps the tunnel, drains on shutdown."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.credentials = proxy_credentials(config)
        self.routing = config.routing
        if config.upstream_proxy is not None:
            config.upstream_proxy.credentials()  # a missing password_env stops the start
        self.metrics = Metrics("agent")
        self.metrics.watch(self._snapshot)
        self.metrics_server = (
            MetricsServer(self.metrics, config.metrics) if config.metrics is not None else None
        )
        self.expiry = ExpiryWatch(
            lambda: (("client", config.tls.cert),), config.tls.expiry_warning_days * DAY
        )
        self.metrics.watch_expiry(self.expiry.seconds_left)
        self.keeper = make_keeper(config, self._open_path, self.metrics)
        self.tunnels = TunnelPool(
            self.keeper,
            max_tunnels=config.max_tunnels,
            idle_timeout=config.extra_tunnel_idle_timeout,
        )
        self.clients: set[ClientConnection] = set()
        # Clients on loopback need no TCP keepalive (the kernel sees both ends),
        # which spares every new client connection a handful of syscalls.
        self.keepalive_clients = not is_loopback(config.listen.host)
        self.console = AgentConsole(self)  # the dashboard at / (fluidity.agent.console)
        # One mapping shared by every session (sessions keep it, not a copy).
        self._local_paths = MappingProxyType(
            {STATUS_PATH: self._status_page, PAC_PATH: self._pac_file, **self.console.paths()}
        )
        self.started = time.time()
        self.address: tuple[str, int] | None = None
        self._listener: asyncio.Server | BatchListener | None = None
        self._keeper_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start keeping the tunnel and listening; ``address`` holds the bound address.

        With a ``lifecycle:`` section the cloud server is woken first, and the
        tunnel goes to the address the control plane reports once it is ready.
        Raises ``ConfigError`` if the proxy or metrics address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        if self.config.lifecycle is not None:
            control = ControlPlaneClient(self.config.lifecycle)
            self.keeper.host = await control.wait_until_ready(progress=log.info)
        listen = self.config.listen
        try:
            self._listener = await listen_on(
                self._make_client, listen.host, listen.port, backlog=LISTEN_BACKLOG
            )
        except OSError as exc:
            raise ConfigError(
                f"listen: cannot listen on {listen}: {exc.strerror or exc}; "
                "choose another address with --listen or listen: in agent.yaml"
            ) from exc
        if self.metrics_server is not None:
            try:
                await self.metrics_server.start()
            except ConfigError:
                self._listener.close()
                raise
        sockname = self._listener.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        log.info(
            "fluidity agent: HTTP proxy on %s:%d, tunnel to %s (transport: %s)%s (event loop: %s)",
            *self.address,
            self.keeper.address,
            self.config.transport,
            describe_routes(self.config),
            loop_name(loop),
        )
        self._keeper_task = loop.create_task(self.keeper.run(), name="tunnel-keeper")
        self.console.start()
        self.expiry.refresh_and_check()
        self._expiry_task = loop.create_task(self.expiry.run(), name="expiry-check")

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain."""
        await stop.wait()
        await self.shutdown()

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let client exchanges finish up to the deadline, then close.

        Connections between requests (idle keep-alive) are closed at once, and
        each busy one as soon as its exchange ends; past the deadline the rest
        are reset. The tunnel goes last, with a GOAWAY.
        """
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        started = time.monotonic()
        if self._listener is not None:
            self._listener.close()
        busy = self._close_idle_clients()
        if busy:
            log.info("draining %d client connections (up to %.0f s)", busy, timeout)
        try:
            async with asyncio.timeout(timeout):
                # Exchanges end in protocol callbacks; a short poll keeps them free of
                # shutdown bookkeeping on the hot path.
                while self._close_idle_clients():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning("drain deadline passed: closing %d connections", len(self.clients))
        for client in list(self.clients):
            client.close()
        await self.console.close()
        tasks = [task for task in (self._keeper_task, self._expiry_task) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.tunnels.close()
        await self._tunnel_closed()
        await self._kill_cloud_server()
        if self._listener is not None:
            await self._listener.wait_closed()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        log.info("agent drained in %.2f s", time.monotonic() - started)

    def _close_idle_clients(self) -> int:
        """Close every client connection between exchanges; return how many are busy."""
        busy = 0
        for client in list(self.clients):
            if client.busy:
                busy += 1
            else:
                client.close_idle()
        return busy

    async def _tunnel_closed(self) -> None:
        """Let the tunnel's TLS close finish (close_notify both ways), briefly.

        The keeper starts the close when it stops; through a corporate proxy the
        server's answer takes a few hops, and returning before it would leave the
        socket open behind a stopped agent. A server that does not answer in
        ``CLOSE_GRACE`` seconds gets the connection dropped.
        """
        conn = self.keeper.connection
        if conn is None or conn.closed.done():
            return
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await asyncio.shield(conn.closed)
        except TimeoutError:
            conn.close_now("agent stopping: the server did not finish closing the connection")

    async def _kill_cloud_server(self) -> None:
        lifecycle = self.config.lifecycle
        if lifecycle is None or not lifecycle.kill_on_exit:
            return
        try:
            status = await ControlPlaneClient(lifecycle).kill()
        except (LifecycleError, ConfigError) as exc:
            log.warning("could not stop the cloud server: %s", exc)
        else:
            log.info("asked the cloud server to stop: %s", status.status.value)

    def forget(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        self.console.client_gone(client)

    def status(self) -> dict[str, Any]:
        """What ``fluidity status`` prints (docs/observability.md describes each key).

        Bytes are stream payload since the agent started, over every connection.
        """
        keeper = self.keeper
        now = time.time()
        return {
            "version": __version__,
            "state": keeper.state.value,
            "server": keeper.address,
            "transport": keeper.transport,
            "listen": f"{self.address[0]}:{self.address[1]}" if self.address else None,
            "uptime": round(now - self.started, 1),
            "connected_for": round(now - keeper.connected_since, 1)
            if keeper.connected_since
            else None,
            "reconnects": keeper.reconnects,
            "tunnels": self.tunnels.tunnels,
            "client_connections": len(self.clients),
            "streams": self._streams_by_kind(),
            "bytes_in": self.tunnels.bytes_in,
            "bytes_out": self.tunnels.bytes_out,
            "last_error": keeper.last_error or None,
            "upstream_proxy": mask_url(proxy.url)
            if (proxy := self.config.upstream_proxy)
            else None,
            "event_loop": loop_name(asyncio.get_running_loop()),
            "metrics": metrics_url(self.metrics_server),
        }

    def _streams_by_kind(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for client in self.clients:
            if client.stream is not None:
                kinds[client.kind] = kinds.get(client.kind, 0) + 1
        return kinds

    def _snapshot(self) -> Snapshot:
        """Live state for a metrics scrape."""
        return Snapshot(
            tunnel_connections=self.tunnels.tunnels,
            streams_active=self._streams_by_kind(),
            bytes_received=self.tunnels.bytes_in,
            bytes_sent=self.tunnels.bytes_out,
            tunnel_state=self.keeper.state.value,
            tunnel_states=tuple(state.value for state in TunnelState),
            client_connections=len(self.clients),
        )

    async def _open_path(self, host: str, port: int, *, timeout: float) -> Streams:  # noqa: ASYNC109
        """The tunnel's way out, through the ``upstream_proxy`` in force (a reload changes it)."""
        return await open_path(self.config.upstream_proxy, host, port, timeout=timeout)

    async def open_direct(self, host: str, port: int, handler: StreamHandler) -> DirectStream:
        """A connection to a ``direct:`` host reporting to ``handler``, through the
        corporate proxy if one is set; ``handshake_timeout`` bounds it. Raises PathError."""
        timeout = self.config.handshake_timeout
        return await DirectStream.open(
            self.config.upstream_proxy, host, port, handler, timeout=timeout
        )

    def _make_client(self) -> ClientConnection | Refuser:
        if len(self.clients) >= self.config.max_client_connections:
            log.warning(
                "max_client_connections (%d) reached: refusing a client",
                self.config.max_client_connections,
            )
            return Refuser()
        session = FirstByteSession(http=self._http_session, socks=self._socks_session)
        client = ClientConnection(self, session)
        self.clients.add(client)
        return client

    def _http_session(self) -> ClientSession:
        return ClientSession(credentials=self.credentials, local_paths=self._local_paths)

    def _socks_session(self) -> SocksRelay:
        return SocksRelay(self.credentials)

    def _status_page(self, request: LocalRequest) -> LocalResponse:
        if self.credentials is not None and not request.authenticated:
            raise ProxyProtocolError("the status page needs the proxy credentials", 407)
        body = json.dumps(self.status(), indent=2).encode() + b"\n"
        return LocalResponse(200, "application/json", body)

    def _pac_file(self, request: LocalRequest) -> LocalResponse:
        """The split routing as a PAC file; no credentials needed (browsers fetch PAC
        files without proxy authentication, and it holds only the direct: list)."""
        assert self.address is not None  # requests arrive only once listening
        host, port = self.address
        if ipaddress.ip_address(host).is_unspecified:
            host = host_header_name(request) or "127.0.0.1"
        return LocalResponse(200, PAC_TYPE, self.routing.pac_file(host, port).encode())


def make_keeper(config: AgentConfig, connector: Connector, metrics: Metrics) -> TunnelKeeper:
    """The keeper of the agent's tunnel to ``config.server``, reaching it by ``connector``."""
    context = agent_context(config.tls.ca, config.tls.cert, config.tls.key)
    websocket = None
    if config.transport != "direct":
        websocket = WebSocketSettings(
            outer_context=outer_agent_context(config.tls.ca, config.websocket.outer_ca),
            url=config.websocket.url,
            ping_interval=config.websocket.ping_interval,
        )
    return TunnelKeeper(
        host=config.server.host,
        port=config.server.port,
        server_name=config.server_hostname,
        context=context,
        cert_description=describe(config.tls.cert),
        keepalive_interval=config.keepalive_interval,
        keepalive_timeout=config.keepalive_timeout,
        handshake_timeout=config.handshake_timeout,
        connect_wait=config.connect_wait,
        stream_idle_timeout=config.stream_idle_timeout,
        backoff=Backoff(config.reconnect.initial, config.reconnect.max),
        connector=connector,
        metrics=metrics,
        ca_pem=config.tls.ca.read_bytes(),
        transport=config.transport,
        websocket=websocket,
    )
