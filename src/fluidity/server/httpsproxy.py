"""The server as an HTTPS proxy for clients with no agent (``https_proxy:`` in server.yaml).

A TLS connection on the server's port whose ALPN is ``http/1.1`` or none (and,
with the WebSocket transport on, whose first request is a proxy request: see
``fluidity.transport.proxydoor``) becomes a ``ProxyClient``: the agent's own
HTTP/1.1 proxy core (``fluidity.protocol.proxy.ClientSession``) driven by the
shared ``fluidity.transport.proxydriver.ProxyDriver``, whose upstreams are
connections the server's ``Dialer`` opens to targets: the same target policy,
circuit breaker and retries as tunnel streams, the same answers (403 with the
rule, 502, 503, 504), the same metrics (streams opened and refused by kind).

Admission happens once per connection, right after the TLS handshake, and
mirrors the tunnels':

- TLS 1.3 only, as for the direct transport;
- a client certificate is required (verified, and checked against the CRL, by
  the handshake itself), unless ``require_certificate: false``: then a client
  without one must send ``auth``'s Basic credentials with every request (407
  otherwise; compared in constant time by the core, never logged);
- a certificate's identity must pass ``clients.allow``; it names the client in
  log lines, as a tunnel's does;
- at most ``limits.max_tunnels`` proxy connections at once.

A connection refused for its certificate is closed without a byte, exactly as
a tunnel is, and counted as a failed handshake under the same reason labels.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from fluidity.config.server import ServerConfig
from fluidity.errors import FluidityError, HandshakeError, TargetError
from fluidity.observe.metrics import Metrics
from fluidity.protocol.identity import ClientIdentity, IdentityAllowList
from fluidity.protocol.proxy import ClientSession
from fluidity.server.dialer import Dialer
from fluidity.transport.proxydriver import ProxyDriver, Refusal, Upstream
from fluidity.transport.socketstream import SocketStream

log = logging.getLogger(__name__)

# Told of a connection refused right after its handshake: the peer, and why.
RefusalCallback = Callable[[str, HandshakeError], None]


class HttpsProxyService:
    """Makes and tracks the server's HTTPS proxy connections; see the module docstring."""

    def __init__(
        self,
        config: ServerConfig,
        dialer: Dialer,
        metrics: Metrics,
        clients: IdentityAllowList,
        on_refused: RefusalCallback,
    ) -> None:
        settings = config.https_proxy
        self.config = config
        self.dialer = dialer
        self.metrics = metrics
        self.clients = clients
        self.on_refused = on_refused
        # Read once at start: a variable unset or a file readable by others stops the
        # server with a ConfigError naming the key, rather than failing every client.
        self.credentials = settings.auth.credentials() if settings.auth is not None else None
        self.require_certificate = settings.require_certificate
        self.head_timeout = settings.head_timeout
        self.connections: set[ProxyClient] = set()
        self.draining = False

    @property
    def admits(self) -> str:
        """Who may use the proxy, in words, for the start line."""
        if self.credentials is None:
            return "clients with a certificate of the CA"
        return f"clients with a certificate, or user {self.credentials[0]!r} with its password"

    def make(self) -> ProxyClient:
        """The protocol of one new proxy connection (the front door's ``make_proxy``)."""
        return ProxyClient(self)

    def admit(self, client: ProxyClient) -> bool:
        """Register ``client``; False (logged) once ``limits.max_tunnels`` are live."""
        limit = self.config.limits.max_tunnels
        if self.draining or len(self.connections) >= limit:
            why = (
                "the server is shutting down" if self.draining else f"limits.max_tunnels ({limit})"
            )
            log.warning("refusing HTTPS proxy client %s: %s", client.peer_name, why)
            return False
        self.connections.add(client)
        return True

    def forget(self, client: ProxyClient) -> None:
        self.connections.discard(client)

    def drained(self) -> bool:
        """Close the idle connections (the server is draining); True once none is busy."""
        self.draining = True
        for client in list(self.connections):
            if not client.busy:
                client.close_idle()
        return not any(client.busy for client in self.connections)

    def close(self) -> None:
        """Reset every connection still open (the drain deadline passed)."""
        for client in list(self.connections):
            client.close()


class ProxyClient(ProxyDriver):
    """One client using the server as its HTTPS proxy; its upstreams are dialled targets."""

    def __init__(self, service: HttpsProxyService) -> None:
        super().__init__(
            ClientSession(), service.metrics, head_timeout=service.head_timeout, keepalive=True
        )
        self.service = service
        self.identity = ClientIdentity()
        self.certified = False  # came with a client certificate (not Basic credentials)
        self.peer_name = "?"
        self._idle_timeout = service.config.limits.stream_idle_timeout
        self._idle_timer: asyncio.TimerHandle | None = None
        self._heard = 0.0  # loop time of the last byte either way

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = _peer(transport)
        cert = transport.get_extra_info("peercert") or {}
        self.identity = ClientIdentity.from_peercert(cert)
        self.certified = bool(cert)
        if not self._admissible(transport, peer, bool(cert)):
            self._closed = True
            cast(asyncio.Transport, transport).abort()  # uvloop's are not subclasses
            return
        if not cert:
            # No certificate, so require_certificate is false: Basic credentials it is.
            credentials = self.service.credentials
            assert credentials is not None  # the config allows no cert-less clients without
            self.session = ClientSession(credentials=credentials)
            self.peer_name = f"{credentials[0]} (password)@{peer}"
        else:
            self.peer_name = f"{self.identity.label}@{peer}"
        if not self.service.admit(self):
            self._closed = True
            cast(asyncio.Transport, transport).abort()  # uvloop's are not subclasses
            return
        log.debug("HTTPS proxy client connected: %s", self.peer_name)
        super().connection_made(transport)
        if self._idle_timeout > 0:
            self._heard = asyncio.get_running_loop().time()
            self._idle_timer = asyncio.get_running_loop().call_later(
                self._idle_timeout, self._on_idle_timer
            )

    def data_received(self, data: bytes) -> None:
        if self._idle_timer is not None:
            self._heard = asyncio.get_running_loop().time()
        super().data_received(data)

    def stream_data(self, data: bytes) -> None:
        if self._idle_timer is not None:
            self._heard = asyncio.get_running_loop().time()
        super().stream_data(data)

    def eof_received(self) -> bool:
        super().eof_received()
        # TLS has no half-close in asyncio: the transport closes whatever we return, and
        # returning True only earns a warning. The session has ended the exchange.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)
        self.service.forget(self)

    def _on_idle_timer(self) -> None:
        """``limits.stream_idle_timeout``, as for tunnel streams: an upstream with no byte
        either way for that long is ended like a reset stream (502 before a response
        byte, else the client connection is reset). Idle between requests is the
        head timeout's business."""
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._heard
        stream = self.stream
        if stream is None or quiet < self._idle_timeout:
            wait = self._idle_timeout - quiet if stream is not None else self._idle_timeout
            self._idle_timer = loop.call_later(max(wait, 0.01), self._on_idle_timer)
            return
        self._idle_timer = None
        why = f"no bytes either way for {self._idle_timeout:g} s (limits.stream_idle_timeout)"
        log.info("%s: %s closed: %s", self.peer_name, self.kind, why)
        stream.abort()
        self.stream_reset(why)

    def close(self, reason: str = "") -> None:
        """Reset the connection and its upstream (the drain deadline passed, or its
        certificate was revoked: ``reason``, logged by the caller)."""
        super().close()

    def _admissible(self, transport: asyncio.BaseTransport, peer: str, has_cert: bool) -> bool:
        """Whether this connection may use the proxy at all; if not, logged and counted."""
        ssl_object = transport.get_extra_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else None
        if version != "TLSv1.3":
            why = f"{version or 'no TLS'}: the HTTPS proxy requires TLS 1.3"
            self.service.on_refused(peer, HandshakeError(why, "protocol_version"))
            return False
        if not has_cert and self.service.require_certificate:
            why = (
                "the client sent no certificate: the HTTPS proxy requires one "
                "(curl: --proxy-cert and --proxy-key)"
            )
            self.service.on_refused(peer, HandshakeError(why, "certificate_missing"))
            return False
        refusal = self.service.clients.refusal(self.identity) if has_cert else None
        if refusal is not None:
            log.warning("refusing HTTPS proxy client %s: %s", peer, refusal)
            self.service.metrics.handshake_failed("certificate_not_allowed")
            return False
        return True

    async def _connect(self, host: str, port: int) -> Upstream:
        """A connection to ``host:port`` through the server's dialer (policy, retries)."""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        stream = SocketStream(authority, self)
        await self.service.dialer.dial(authority, lambda: stream)
        log.debug("%s: %s %s -> open", self.peer_name, self.kind, authority)
        return stream

    def _refusal(self, exc: FluidityError) -> Refusal | None:
        if not isinstance(exc, TargetError):
            return None
        log.info("%s: %s -> %d: %s", self.peer_name, self.kind, exc.status, exc)
        return Refusal(exc.status, str(exc), exc.kind)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if not peer:
        return "unknown peer"
    return f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
