"""The agent's two ways to the server, and how it tells a TLS-inspecting proxy apart.

``DirectRoute`` is the tunnel's own TLS 1.3 mTLS connection, HTTP/2 on top.
``WebSocketRoute`` opens an ordinary HTTPS connection, upgrades it to a
WebSocket and runs that same TLS 1.3 mTLS handshake inside the WebSocket's
binary messages (``fluidity.transport.wslink``). Both end in a ``TunnelConnection``.

A TLS-inspecting proxy ends TLS itself and answers with a certificate from
the corporate CA. On the direct route that is a verification failure; the
route then *probes*: a second handshake that verifies nothing, reads the
presented certificate and closes. If our CA did not issue it, the failure is
``TLSInspectionDetected``, naming the issuer. The probe never carries data;
it only turns "certificate verify failed" into a diagnosis.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from fluidity.agent.path import Streams, attach, attach_tls
from fluidity.config.values import WebSocketEndpoint
from fluidity.errors import HandshakeError, PathError, TLSInspectionDetected, WebSocketRefused
from fluidity.protocol.tunnel import Side
from fluidity.protocol.wschannel import WebSocketChannel
from fluidity.transport.connection import TunnelConnection
from fluidity.transport.tls import handshake_failure_reason
from fluidity.transport.wslink import WebSocketLink

if TYPE_CHECKING:
    # Imported where used, on a failed verification only: the cryptography bindings
    # cost about 15 MB that an agent never needs otherwise (tests/test_lean_imports.py).
    from cryptography import x509

log = logging.getLogger(__name__)

ConnectionFactory = Callable[[], TunnelConnection]


class Connector(Protocol):
    """Opens the TCP path to the server within ``timeout`` seconds: directly, or
    through a corporate proxy. Raises PathError (see :func:`fluidity.agent.path.open_path`)."""

    def __call__(self, host: str, port: int, *, timeout: float) -> Awaitable[Streams]: ...


class Route(Protocol):
    """One way to the server; ``name`` is ``direct`` or ``websocket``."""

    @property
    def name(self) -> str: ...

    async def open(self, factory: ConnectionFactory, *, budget: float) -> TunnelConnection:
        """A connected, handshaken tunnel connection within ``budget`` seconds;
        ``HandshakeError`` or ``PathError`` otherwise."""
        ...


@dataclass(frozen=True)
class DirectRoute:
    """TLS 1.3 with client certificate straight to the server, ALPN ``h2``."""

    host: str
    port: int
    server_name: str
    context: ssl.SSLContext
    ca_pem: bytes
    connector: Connector
    name: str = "direct"

    async def open(self, factory: ConnectionFactory, *, budget: float) -> TunnelConnection:
        clock = _Budget(budget)
        streams = await self.connector(self.host, self.port, timeout=budget)
        conn = factory()
        address = f"{self.host}:{self.port}"
        try:
            await attach_tls(
                streams, conn, self.context, server_hostname=self.server_name, timeout=clock.left()
            )
        except ssl.SSLCertVerificationError as exc:
            issuer = await self._foreign_issuer(clock.left())
            if issuer is not None:
                raise TLSInspectionDetected(self.server_name, issuer, exc.verify_message) from exc
            raise HandshakeError(
                f"cannot verify the server certificate of {address} "
                f"(as {self.server_name}): {exc.verify_message}",
                handshake_failure_reason(exc),
            ) from exc
        except ssl.SSLError as exc:
            raise HandshakeError(
                f"TLS with {address} failed: {exc}", handshake_failure_reason(exc)
            ) from exc
        except ConnectionAbortedError as exc:  # before OSError, its base
            raise _handshake_timeout(address, budget) from exc
        except OSError as exc:
            raise HandshakeError(
                f"cannot connect to {address}: {_why(exc)}", "connect_failed"
            ) from exc
        return conn

    async def _foreign_issuer(self, budget: float) -> str | None:
        """The issuer of what the network presents for the server, if our CA did not issue it."""
        presented = await presented_certificate(
            self.connector, self.host, self.port, self.server_name, alpn="h2", budget=budget
        )
        if presented is None or issued_by_any(presented, self.ca_pem):
            return None
        if named_like_any(presented, self.ca_pem):
            # Issued in our CA's name but not with its key: a CA regenerated on one
            # side (a configuration mistake), not an inspecting proxy's CA.
            return None
        return presented.issuer.rfc4514_string() or "an unnamed issuer"


@dataclass(frozen=True)
class WebSocketSettings:
    """The agent's WebSocket transport settings: the outer TLS context, an explicit
    endpoint (None: the server's address at the default path) and the ping interval."""

    outer_context: ssl.SSLContext
    url: WebSocketEndpoint | None = None
    ping_interval: float = 10.0


@dataclass(frozen=True)
class WebSocketRoute:
    """HTTPS + WebSocket upgrade at ``endpoint``, then the tunnel's TLS inside it."""

    endpoint: WebSocketEndpoint
    server_name: str
    inner_context: ssl.SSLContext
    outer_context: ssl.SSLContext
    connector: Connector
    ping_interval: float = 10.0
    ping_timeout: float = 10.0
    name: str = "websocket"

    async def open(self, factory: ConnectionFactory, *, budget: float) -> TunnelConnection:
        end = self.endpoint
        clock = _Budget(budget)
        link = WebSocketLink(
            Side.AGENT,
            WebSocketChannel.client(host=end.name, port=end.port, path=end.path, secure=end.secure),
            self.inner_context,
            factory,
            server_hostname=self.server_name,
            peer=f"server {end}",
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
        )
        await self._connect_outer(link, clock)
        try:
            async with asyncio.timeout(clock.left()):
                conn = await link.opened
        except WebSocketRefused as exc:
            raise WebSocketRefused(
                f"{exc}; check websocket.url (the server's websocket.path) and that the "
                "network lets WebSockets through",
                exc.status,
            ) from exc
        except TimeoutError as exc:
            link.abort()
            raise HandshakeError(
                f"no WebSocket upgrade and tunnel handshake from {end} within {budget:g} s",
                "timeout",
            ) from exc
        except BaseException:
            link.abort()
            raise
        assert isinstance(conn, TunnelConnection)
        return conn

    async def _connect_outer(self, link: WebSocketLink, clock: _Budget) -> None:
        """The path to the endpoint, and the outer TLS on it unless it is ``ws://``."""
        end = self.endpoint
        streams = await self.connector(end.host, end.port, timeout=clock.left())
        # A buffered protocol that also takes data_received, as attach's replay needs.
        protocol = cast(asyncio.Protocol, link)
        if not end.secure:
            await attach(streams, protocol)
            return
        try:
            await attach_tls(
                streams,
                protocol,
                self.outer_context,
                server_hostname=end.name,
                timeout=clock.left(),
            )
        except ssl.SSLCertVerificationError as exc:
            presented = await presented_certificate(
                self.connector, end.host, end.port, end.name, alpn="http/1.1", budget=clock.left()
            )
            issuer = presented.issuer.rfc4514_string() if presented is not None else "unknown"
            raise HandshakeError(
                f"cannot verify the certificate presented for {end.name} on the WebSocket "
                f"transport's outer TLS layer (issued by {issuer}): {exc.verify_message}; "
                "if a TLS-inspecting proxy presents it, trust its CA with websocket.outer_ca",
                "outer_" + handshake_failure_reason(exc),
            ) from exc
        except ssl.SSLError as exc:
            raise HandshakeError(
                f"outer TLS with {end} failed: {exc}", "outer_" + handshake_failure_reason(exc)
            ) from exc
        except ConnectionAbortedError as exc:  # before OSError, its base
            raise _handshake_timeout(str(end), clock.budget) from exc
        except OSError as exc:
            raise HandshakeError(f"cannot connect to {end}: {_why(exc)}", "connect_failed") from exc


async def presented_certificate(
    connector: Connector, host: str, port: int, server_name: str, *, alpn: str, budget: float
) -> x509.Certificate | None:
    """The certificate the network presents for ``server_name`` at ``host:port``, read by
    a handshake that verifies nothing and sends nothing; None if there is none to read."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # diagnosis only: closed before any data
    context.set_alpn_protocols([alpn])
    clock = _Budget(budget)
    try:
        streams = await connector(host, port, timeout=clock.left())
        transport = await attach_tls(
            streams, asyncio.Protocol(), context, server_hostname=server_name, timeout=clock.left()
        )
    except (OSError, ssl.SSLError, PathError) as exc:
        log.debug("probe of %s:%d failed: %s", host, port, exc)
        return None
    try:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        transport.abort()
    from cryptography import x509

    return x509.load_der_x509_certificate(der) if der else None


def issued_by_any(certificate: x509.Certificate, ca_pem: bytes) -> bool:
    """True if one of the CA certificates in ``ca_pem`` signed ``certificate``."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    for ca in x509.load_pem_x509_certificates(ca_pem):
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def named_like_any(certificate: x509.Certificate, ca_pem: bytes) -> bool:
    """True if ``certificate``'s issuer bears the name of a CA in ``ca_pem``."""
    from cryptography import x509

    return any(ca.subject == certificate.issuer for ca in x509.load_pem_x509_certificates(ca_pem))


class _Budget:
    """One timeout shared by consecutive steps: ``left()`` is what remains of it."""

    def __init__(self, seconds: float) -> None:
        self.budget = seconds
        self._deadline = asyncio.get_running_loop().time() + seconds

    def left(self) -> float:
        return max(self._deadline - asyncio.get_running_loop().time(), 0.001)


def _handshake_timeout(address: str, budget: float) -> HandshakeError:
    # ConnectionAbortedError is attach_tls's way of saying the TLS handshake timed out.
    return HandshakeError(
        f"connecting to {address} timed out after {budget:g} s (handshake_timeout)", "timeout"
    )


def _why(exc: OSError) -> str:
    """An OSError as words, even when it carries none (a reset mid-handshake)."""
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError) and not str(exc):
        return (
            "the server closed the connection during the TLS handshake "
            "(is it a fluidity server speaking TLS 1.3?)"
        )
    return str(exc) or type(exc).__name__
