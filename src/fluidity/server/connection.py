"""The server's side of one tunnel: ``ServerConnection``, and closing revoked ones.

A ``ServerConnection`` is a ``TunnelConnection`` that, as soon as TLS is up,
reads its client's identity from the certificate and asks its
``TunnelRegistry`` (the server) two questions: may this client connect at all
(the ``clients.allow`` list; if not, the connection closes before a single
HTTP/2 byte), and is there room for one more tunnel (``limits.max_tunnels``;
if not, it closes as refused). When it is gone it tells the registry, which
keeps its byte counts. Both transports (direct and WebSocket) end here, so the
checks apply whichever one an agent uses.

``close_revoked`` ends the live tunnels whose client certificate a CRL lists,
which the server runs after each reload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Protocol

from fluidity.config.server import ServerConfig
from fluidity.config.values import FileOrPem
from fluidity.errors import CertificateError, ConfigError
from fluidity.observe.metrics import Metrics
from fluidity.protocol.identity import ClientIdentity, IdentityAllowList
from fluidity.protocol.tunnel import Side
from fluidity.transport.connection import TunnelConnection
from fluidity.transport.tls import describe

log = logging.getLogger(__name__)


class TunnelRegistry(Protocol):
    """What a ``ServerConnection`` needs from its server."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def clients(self) -> IdentityAllowList: ...

    @property
    def metrics(self) -> Metrics: ...

    def admit(self, conn: ServerConnection) -> bool:
        """Register ``conn``; False (and logged) if ``limits.max_tunnels`` is reached."""
        ...

    def forget(self, conn: ServerConnection) -> None:
        """``conn`` is closed: drop it, keeping its byte counts and last activity."""
        ...


class ServerConnection(TunnelConnection):
    """A tunnel connection that checks its client's identity and registers with its server."""

    def __init__(self, registry: TunnelRegistry, side: Side, **kwargs: object) -> None:
        super().__init__(side, **kwargs)  # type: ignore[arg-type]
        self._registry = registry
        self.identity = ClientIdentity()
        self._admitted = False
        # For the dashboard: since when, over which transport, until when its certificate.
        self.since = time.time()
        self.transport_kind = "direct"
        self.cert_expires: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        peercert = transport.get_extra_info("peercert") or {}
        self.identity = ClientIdentity.from_peercert(peercert)
        self.cert_expires = peercert.get("notAfter")
        where = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.peer_name = f"{self.identity.label}@{where}"
        refusal = self._registry.clients.refusal(self.identity)
        if refusal is not None:
            # Close before a single HTTP/2 byte: the agent reads the silence after
            # its TLS 1.3 handshake as "my certificate was refused".
            log.warning("refusing agent %s: %s", where, refusal)
            self._registry.metrics.handshake_failed("certificate_not_allowed")
            transport.close()
            return
        super().connection_made(transport)
        if not self._registry.admit(self):
            limit = self._registry.config.limits.max_tunnels
            reason = f"too many tunnels: the server's limits.max_tunnels ({limit}) is reached"
            # Not from inside connection_made: asyncio's TLS transport cannot start its
            # shutdown before the handshake callback has returned.
            self._loop.call_soon(lambda: self.close(reason, refused=True))
            return
        self._admitted = True
        kind = self.transport_kind = transport.get_extra_info("fluidity_transport") or "direct"
        forwarded = transport.get_extra_info("forwarded_for")
        via = f", forwarded for {forwarded}" if forwarded else ""
        log.info("agent connected: %s (%s transport%s)", self.peer_name, kind, via)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._registry.forget(self)
        if self._admitted:
            log.info("agent disconnected: %s (%s)", self.peer_name, self.closed.result())


class Revocable(Protocol):
    """A live connection that a revoked certificate ends: a tunnel, or an HTTPS proxy client."""

    identity: ClientIdentity
    peer_name: str

    def close(self, reason: str = "") -> None: ...


def close_revoked(connections: Iterable[Revocable], crl: FileOrPem) -> None:
    """End each of ``connections`` whose client certificate the CRL ``crl`` lists.

    An unreadable or malformed CRL is logged and closes nothing: the reload that
    read it has already kept or replaced the TLS context on its own terms.
    """
    # Imported here, on a reload with a CRL: ``revocation`` loads the cryptography
    # bindings, about 15 MB that a server without a CRL never needs.
    from fluidity.pki.revocation import revoked_serials

    try:
        revoked = revoked_serials(crl.read_bytes(), describe(crl))
    except (CertificateError, ConfigError) as exc:
        log.error("cannot read %s to check live tunnels: %s", describe(crl), exc)
        return
    for conn in list(connections):
        if conn.identity.serial in revoked:
            log.warning("closing the tunnel of %s: its certificate is revoked", conn.peer_name)
            conn.close("client certificate revoked")
