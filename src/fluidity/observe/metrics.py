"""Prometheus metrics of one agent or server: a registry object, never module globals.

Each ``Agent`` and ``Server`` owns one ``Metrics``; two of them in one process
(the in-process tests, ``fluidity quickstart``) never share a series.

Two kinds of series, by how they are kept:

* **events**, counted where they happen, at the few natural points: a tunnel
  connection made, a handshake failed, a stream opened or refused, a
  reconnect. None of them is on the per-chunk path.
* **state**, read at scrape time from counters the code keeps anyway
  (``TunnelConnection.bytes_in``/``bytes_out``, open streams, circuit
  breakers): the owner registers a ``Snapshot`` source, so the hot path pays
  nothing for metrics.

Every name starts with ``fluidity_``; docs/observability.md lists them.

The same events also feed ``history`` (:mod:`fluidity.observe.history`), the
bounded last ten minutes the dashboard draws: the page, ``fluidity status``
and ``/metrics`` count from one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from fluidity import __version__
from fluidity.observe.history import History

Role = Literal["agent", "server"]

# Stream-open latency: a CONNECT round trip through the tunnel plus the server's dial,
# from a loopback millisecond to a connect timeout.
OPEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# What an agent can tell from a refused CONNECT's status (the server's TargetError kinds).
_KIND_OF_STATUS = {
    403: "policy_refused",
    502: "unreachable",
    503: "circuit_open",
    504: "dial_timeout",
}


@dataclass(frozen=True)
class Snapshot:
    """Live state read at scrape time; ``None`` fields do not apply to the role."""

    tunnel_connections: int
    streams_active: Mapping[str, int]
    bytes_received: int
    bytes_sent: int
    tunnel_state: str | None = None
    tunnel_states: tuple[str, ...] = ()
    client_connections: int | None = None
    circuits: Mapping[str, int] | None = None


SnapshotSource = Callable[[], Snapshot]


def target_error_kind(status: int) -> str:
    """The agent's name for a CONNECT refused with ``status`` (the server knows better)."""
    return _KIND_OF_STATUS.get(status, "other")


class Metrics:
    """The metrics of one agent or server, in their own ``CollectorRegistry``."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.history = History()
        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        info = Gauge(
            "fluidity_info", "Version and role of this process.", ["version", "role"], registry=reg
        )
        info.labels(__version__, role).set(1)
        self.connections = Counter(
            "fluidity_tunnel_connections",
            "Tunnel connections established (agent: to its server; server: from agents).",
            registry=reg,
        )
        self.handshake_failures = Counter(
            "fluidity_handshake_failures",
            "Tunnel connections that failed before carrying a stream, by reason.",
            ["reason"],
            registry=reg,
        )
        self.streams_opened = Counter(
            "fluidity_streams_opened",
            "Streams opened, by kind (agent: connect, forward, socks; server: connect, and "
            "connect, forward from its HTTPS proxy).",
            ["kind"],
            registry=reg,
        )
        self.target_errors = Counter(
            "fluidity_target_errors",
            "Stream opens answered with an error status, by kind and status.",
            ["kind", "status"],
            registry=reg,
        )
        self.open_seconds = Histogram(
            "fluidity_stream_open_seconds",
            "Time to open a stream (agent: CONNECT sent to answer; server: dial), by outcome.",
            ["outcome"],
            buckets=OPEN_BUCKETS,
            registry=reg,
        )
        self.reconnects = Counter(
            "fluidity_tunnel_reconnects",
            "Agent: tunnel reconnection attempts after a failure or a lost connection.",
            registry=reg if role == "agent" else None,  # a server never reconnects
        )

    # -- events -------------------------------------------------------------

    def connection_made(self) -> None:
        self.connections.inc()

    def handshake_failed(self, reason: str, message: str = "", peer: str = "") -> None:
        """A tunnel connection failed; with ``message``, the error log keeps it too."""
        self.handshake_failures.labels(reason).inc()
        if message:
            self.history.error(0, reason, peer, message)

    def stream_opened(self, kind: str, seconds: float, target: str = "") -> None:
        self.streams_opened.labels(kind).inc()
        self.open_seconds.labels("opened").observe(seconds)
        if target:
            self.history.target_opened(target)

    def stream_refused(
        self, kind: str, status: int, seconds: float, target: str = "", message: str = ""
    ) -> None:
        """A stream open answered ``status``; ``kind`` names why (``target_error_kind``).

        ``message`` is the body the client was answered, kept word for word in the
        error log (with ``target``) so the page shows what the client saw.
        """
        self.target_errors.labels(kind, str(status)).inc()
        self.open_seconds.labels("refused").observe(seconds)
        if message:
            self.history.error(status, kind, target, message)

    def reconnecting(self) -> None:
        self.reconnects.inc()

    # -- state and exposition -------------------------------------------------

    def watch(self, source: SnapshotSource) -> None:
        """Read live state from ``source`` at every scrape (register once)."""
        self.registry.register(_SnapshotCollector(source))

    def watch_expiry(self, source: Callable[[], Mapping[str, float]]) -> None:
        """Expose ``fluidity_certificate_expiry_seconds{kind}`` from ``source`` (seconds
        left per kind: server, ca, crl, client) at every scrape (register once)."""
        self.registry.register(_ExpiryCollector(source))

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The current metrics and their content type, in the format ``accept`` prefers."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def totals(self, name: str, label: str) -> dict[str, float]:
        """The samples of counter ``name`` added up by ``label``, e.g. refusals by kind."""
        found: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == f"{name}_total" and label in sample.labels:
                    key = sample.labels[label]
                    found[key] = found.get(key, 0.0) + sample.value
        return found

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """One sample's value (0 if absent): for status pages and tests."""
        found = self.registry.get_sample_value(name, dict(labels or {}))
        return found if found is not None else 0.0


class _SnapshotCollector:
    """Turns a ``Snapshot`` into metric families at scrape time."""

    def __init__(self, source: SnapshotSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        snap = self._source()
        yield _gauge(
            "fluidity_tunnel_connections_open",
            "Tunnel connections open now.",
            snap.tunnel_connections,
        )
        streams = GaugeMetricFamily(
            "fluidity_streams_active", "Tunnel streams open now, by kind.", labels=["kind"]
        )
        for kind, count in sorted(snap.streams_active.items()):
            streams.add_metric([kind], count)
        yield streams
        yield CounterMetricFamily(
            "fluidity_bytes_received",
            "Stream payload bytes received from the tunnel.",
            value=snap.bytes_received,
        )
        yield CounterMetricFamily(
            "fluidity_bytes_sent",
            "Stream payload bytes sent into the tunnel.",
            value=snap.bytes_sent,
        )
        if snap.tunnel_state is not None:
            state = GaugeMetricFamily(
                "fluidity_tunnel_state",
                "Agent: 1 for the tunnel's current state.",
                labels=["state"],
            )
            for name in snap.tunnel_states:
                state.add_metric([name], 1 if name == snap.tunnel_state else 0)
            yield state
        if snap.client_connections is not None:
            yield _gauge(
                "fluidity_client_connections",
                "Agent: local client connections open.",
                snap.client_connections,
            )
        if snap.circuits is not None:
            circuits = GaugeMetricFamily(
                "fluidity_circuit_breakers",
                "Server: targets whose circuit breaker is open or half-open.",
                labels=["state"],
            )
            for name in ("open", "half-open"):
                circuits.add_metric([name], snap.circuits.get(name, 0))
            yield circuits


class _ExpiryCollector:
    """``fluidity_certificate_expiry_seconds``, read at scrape time."""

    def __init__(self, source: Callable[[], Mapping[str, float]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "fluidity_certificate_expiry_seconds",
            "Seconds until a certificate or the CRL expires (negative: expired), by kind "
            "(server, ca, crl, client).",
            labels=["kind"],
        )
        for kind, seconds in sorted(self._source().items()):
            family.add_metric([kind], seconds)
        yield family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
