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
from fluidity.observe import dashboard
from fluidity.observe.expiry import ExpiryWatch
from fluidity.observe.history import INTERVAL
from fluidity.observe.metrics import Metrics, Snapshot
from fluidity.protocol.retry import CircuitBreaker
from fluidity.server.streams import StreamService
from fluidity.server.tunnels import Tunnels
from fluidity.transport.connection import TunnelConnection

_CERTIFICATE_NAMES = {"server": "server certificate", "ca": "CA", "crl": "CRL (next update)"}


class ConsoleHost(Protocol):
    """What the console needs of the server (``fluidity.server.server.Server``)."""

    config: ServerConfig
    metrics: Metrics
    started: float
    streams: StreamService
    expiry: ExpiryWatch
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
        """The server's certificate, its CA and the CRL with their expiry dates: what the
        expiry watch read at start, after each TLS reload and every few hours."""
        now = dt.datetime.now(dt.UTC)
        return [
            {
                "name": _CERTIFICATE_NAMES.get(expiry.kind, expiry.kind),
                "file": expiry.source,
                "not_after": expiry.not_after.isoformat(),
                "days_left": (expiry.not_after - now).days,
            }
            for expiry in self.server.expiry.expiries
        ]


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
