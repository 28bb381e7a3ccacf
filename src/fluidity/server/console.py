"""The server's dashboard: ``/`` on its ``metrics:`` listener.

The page is the agent's (:mod:`fluidity.observe.dashboard`); this module gives
it the server's side, from the counters ``/metrics`` reads: the agents
connected now (identity, address, transport, since when, streams, bytes), the
targets whose circuit breaker is open, refusals by kind with the latest ones
word for word, failed handshakes by reason, whether the server is draining,
and when its certificates expire. Once a second it samples the ``Snapshot``
(bytes and streams) into the bounded history.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from typing import Any, Protocol

from fluidity import __version__
from fluidity.config.server import ServerConfig
from fluidity.config.values import FileOrPem
from fluidity.errors import ConfigError
from fluidity.observe import dashboard
from fluidity.observe.history import INTERVAL
from fluidity.observe.metrics import Metrics, Snapshot
from fluidity.protocol.retry import CircuitBreaker
from fluidity.server.streams import StreamService
from fluidity.server.tunnels import Tunnels
from fluidity.transport.connection import TunnelConnection


class ConsoleHost(Protocol):
    """What the console needs of the server (``fluidity.server.server.Server``)."""

    config: ServerConfig
    metrics: Metrics
    started: float
    streams: StreamService
    address: tuple[str, int] | None

    @property
    def draining(self) -> bool: ...

    tunnels: Tunnels

    def snapshot(self) -> Snapshot: ...


class ServerConsole:
    """Serves the dashboard data of ``server`` and samples its history while it runs."""

    def __init__(self, server: ConsoleHost) -> None:
        self.server = server
        self._sampler: asyncio.Task[None] | None = None
        self._expiry: tuple[bytes, list[dict[str, Any]]] | None = None  # cached per cert

    def start(self) -> None:
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)

    async def _sample_forever(self) -> None:
        while True:
            snap = self.server.snapshot()
            streams = sum(snap.streams_active.values())
            self.server.metrics.history.sample(snap.bytes_received, snap.bytes_sent, streams)
            await asyncio.sleep(INTERVAL)

    def view(self) -> dict[str, Any]:
        """The JSON the page polls with ``role: server``."""
        server, metrics = self.server, self.server.metrics
        now = time.time()
        snap = server.snapshot()
        listen = f"{server.address[0]}:{server.address[1]}" if server.address else None
        return {
            "role": "server",
            "server": {
                "version": __version__,
                "listen": listen,
                "uptime": round(now - server.started, 1),
                "draining": server.draining,
                "tunnels": snap.tunnel_connections,
                "streams": sum(snap.streams_active.values()),
                "streams_requested": server.streams.requested,
                "bytes_in": snap.bytes_received,
                "bytes_out": snap.bytes_sent,
            },
            "agents": [_agent(conn, now) for conn in server.tunnels.live],
            "breakers": _breakers(server.streams.dialer.breaker),
            "refusals": metrics.totals("fluidity_target_errors", "kind"),
            "handshake_failures": metrics.totals("fluidity_handshake_failures", "reason"),
            "certificates": self._certificates(),
            "history": metrics.history.view(),
            "fixes": dict(dashboard.FIXES),
        }

    def _certificates(self) -> list[dict[str, Any]]:
        """The server's certificate and its CA, with their expiry dates (read once per
        certificate: a reload that changes the file shows at the next poll)."""
        tls = self.server.config.tls
        try:
            pems = _pem(tls.cert) + b"\0" + _pem(tls.ca)
        except (OSError, ConfigError) as exc:
            return [{"name": "certificates", "error": str(exc)}]
        if self._expiry is None or self._expiry[0] != pems:
            self._expiry = (pems, _expiry_dates(pems.split(b"\0")))
        return self._expiry[1]


def _pem(source: FileOrPem) -> bytes:
    return source.pem if source.pem is not None else source.read_bytes()


def _expiry_dates(pems: list[bytes]) -> list[dict[str, Any]]:
    # Imported on the first look at the page: cryptography costs ~15 MB that a server
    # nobody watches never loads.
    from cryptography import x509

    found = []
    for name, pem in zip(("server certificate", "CA"), pems, strict=True):
        cert = x509.load_pem_x509_certificate(pem)
        found.append(
            {
                "name": name,
                "subject": cert.subject.rfc4514_string(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "days_left": (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days,
            }
        )
    return found


def _agent(conn: TunnelConnection, now: float) -> dict[str, Any]:
    since = getattr(conn, "since", now)
    expires = getattr(conn, "cert_expires", None)
    return {
        "agent": conn.peer_name,
        "transport": getattr(conn, "transport_kind", "direct"),
        "since": since,
        "for": round(now - since, 1),
        "streams": conn.active_streams,
        "bytes_in": conn.bytes_in,
        "bytes_out": conn.bytes_out,
        "cert_expires": _iso(expires),
    }


def _iso(openssl_time: str | None) -> str | None:
    """``Mar  4 15:00:00 2027 GMT`` (what ``getpeercert`` says) as ISO 8601."""
    if not openssl_time:
        return None
    try:
        seconds = ssl.cert_time_to_seconds(openssl_time)
    except ValueError:
        return openssl_time
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def _breakers(breaker: CircuitBreaker) -> list[dict[str, str]]:
    states = breaker.states(time.monotonic())
    return [{"target": key, "state": state.value} for key, state in sorted(states.items())]
