"""Prometheus metrics: the registry without a loop, then /metrics of a real agent and server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fluidity.agent import Agent
from fluidity.config.server import CircuitBreakerConfig, DialConfig
from fluidity.config.values import Address
from fluidity.errors import ConfigError
from fluidity.observe.metrics import Metrics, Snapshot, target_error_kind
from fluidity.observe.metricsserver import MetricsServer
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from support.harness import LOOPBACK, Tunnel, make_agent_config, make_server_config
from support.origins import RecordingOrigin

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a text exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- the registry, no loop ------------------------------------------------------------------


def snapshot(**changes: object) -> Snapshot:
    base: dict[str, object] = {
        "tunnel_connections": 1,
        "streams_active": {"connect": 2, "forward": 1},
        "bytes_received": 1000,
        "bytes_sent": 20,
    }
    return Snapshot(**{**base, **changes})  # type: ignore[arg-type]


def test_events_and_snapshot_appear_in_the_exposition() -> None:
    metrics = Metrics("agent")
    states = ("connecting", "connected")
    metrics.watch(
        lambda: snapshot(tunnel_state="connected", tunnel_states=states, client_connections=3)
    )
    metrics.connection_made()
    metrics.handshake_failed("timeout")
    metrics.stream_opened("connect", 0.004)
    metrics.stream_refused(target_error_kind(403), 403, 0.002)
    metrics.reconnecting()
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    got = parse(body.decode())
    assert sample(got, "fluidity_tunnel_connections_total") == 1
    assert sample(got, "fluidity_handshake_failures_total", reason="timeout") == 1
    assert sample(got, "fluidity_streams_opened_total", kind="connect") == 1
    assert sample(got, "fluidity_target_errors_total", kind="policy_refused", status="403") == 1
    assert sample(got, "fluidity_stream_open_seconds_count", outcome="opened") == 1
    assert sample(got, "fluidity_stream_open_seconds_bucket", outcome="opened", le="0.005") == 1
    assert sample(got, "fluidity_stream_open_seconds_bucket", outcome="opened", le="0.0025") == 0
    assert sample(got, "fluidity_tunnel_reconnects_total") == 1
    assert sample(got, "fluidity_streams_active", kind="connect") == 2
    assert sample(got, "fluidity_bytes_received_total") == 1000
    assert sample(got, "fluidity_bytes_sent_total") == 20
    assert sample(got, "fluidity_tunnel_state", state="connected") == 1
    assert sample(got, "fluidity_tunnel_state", state="connecting") == 0
    assert sample(got, "fluidity_client_connections") == 3
    assert sample(got, "fluidity_info", role="agent", version="0.1.0") == 1


def test_every_name_starts_with_fluidity() -> None:
    metrics = Metrics("server")
    metrics.watch(lambda: snapshot(circuits={"open": 1}))
    names = {
        family.name for family in text_string_to_metric_families(metrics.exposition()[0].decode())
    }
    assert names and all(name.startswith("fluidity_") for name in names), names
    assert "fluidity_tunnel_reconnects" not in names  # agent-only
    assert "fluidity_circuit_breakers" in names


def test_two_registries_never_share_a_series() -> None:
    first, second = Metrics("agent"), Metrics("agent")
    first.connection_made()
    assert first.value("fluidity_tunnel_connections_total") == 1
    assert second.value("fluidity_tunnel_connections_total") == 0


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    body, content_type = Metrics("server").exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_refusal_kinds_the_agent_can_tell_from_a_status() -> None:
    assert [target_error_kind(s) for s in (403, 502, 503, 504, 418)] == [
        "policy_refused",
        "unreachable",
        "circuit_open",
        "dial_timeout",
        "other",
    ]


# -- /metrics of a real agent and server ----------------------------------------------------


@pytest.fixture
async def measured(pki: QuickstartPKI) -> AsyncIterator[Tunnel]:
    """Server and agent with metrics on loopback, one failure opening a circuit."""
    server = Server(
        make_server_config(
            pki,
            metrics=Address(LOOPBACK, 0),
            dial=DialConfig(attempts=1),
            circuit_breaker=CircuitBreakerConfig(failures=1),
        )
    )
    await server.start()
    assert server.address is not None
    agent = Agent(make_agent_config(pki, server.address[1], metrics=Address(LOOPBACK, 0)))
    await agent.start()
    tunnel = Tunnel(server, agent)
    try:
        await tunnel.ready()
        yield tunnel
    finally:
        await tunnel.close()


async def scrape(server: MetricsServer | None) -> Samples:
    assert server is not None and server.address is not None
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.get(f"http://{LOOPBACK}:{server.address[1]}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


async def test_traffic_refusals_and_circuits_are_counted_on_both_sides(
    measured: Tunnel, origin: RecordingOrigin
) -> None:
    closed = await asyncio.start_server(lambda r, w: None, LOOPBACK, 0)
    dead_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    async with httpx.AsyncClient(proxy=measured.proxy, trust_env=False, timeout=10) as client:
        assert len((await client.get(f"{origin.url}/bytes/100000")).content) == 100_000
        assert (await client.get("http://169.254.169.254/")).status_code == 403
        assert (await client.get(f"http://{LOOPBACK}:{dead_port}/")).status_code == 502
        assert (await client.get(f"http://{LOOPBACK}:{dead_port}/")).status_code == 503

    agent = await scrape(measured.agent.metrics_server)
    assert sample(agent, "fluidity_tunnel_connections_total") == 1
    assert sample(agent, "fluidity_tunnel_state", state="connected") == 1
    assert sample(agent, "fluidity_streams_opened_total", kind="forward") == 1
    assert sample(agent, "fluidity_target_errors_total", kind="policy_refused", status="403") == 1
    assert sample(agent, "fluidity_target_errors_total", kind="unreachable", status="502") == 1
    assert sample(agent, "fluidity_target_errors_total", kind="circuit_open", status="503") == 1
    assert sample(agent, "fluidity_stream_open_seconds_count", outcome="refused") == 3
    assert sample(agent, "fluidity_bytes_received_total") > 100_000

    server = await scrape(measured.server.metrics_server)
    assert sample(server, "fluidity_tunnel_connections_total") == 1
    assert sample(server, "fluidity_tunnel_connections_open") == 1
    assert sample(server, "fluidity_streams_opened_total", kind="connect") == 1
    assert sample(server, "fluidity_target_errors_total", kind="policy_refused", status="403") == 1
    assert sample(server, "fluidity_target_errors_total", kind="dial_refused", status="502") == 1
    assert sample(server, "fluidity_target_errors_total", kind="circuit_open", status="503") == 1
    assert sample(server, "fluidity_circuit_breakers", state="open") == 1
    assert sample(server, "fluidity_bytes_sent_total") > 100_000
    assert sample(server, "fluidity_info", role="server", version="0.1.0") == 1


async def test_byte_counters_survive_a_reconnect(measured: Tunnel, origin: RecordingOrigin) -> None:
    async with httpx.AsyncClient(proxy=measured.proxy, trust_env=False, timeout=10) as client:
        await client.get(f"{origin.url}/bytes/50000")
        before = (await scrape(measured.agent.metrics_server))["fluidity_bytes_received_total", ()]
        conn = measured.agent.keeper.connection
        assert conn is not None
        conn.close_now("test: cut the tunnel")
        await measured.ready()
        after = await scrape(measured.agent.metrics_server)
    assert after["fluidity_bytes_received_total", ()] >= before > 50_000
    assert sample(after, "fluidity_tunnel_reconnects_total") == 1
    assert sample(after, "fluidity_tunnel_connections_total") == 2


async def test_the_endpoint_answers_only_metrics_and_the_dashboard(measured: Tunnel) -> None:
    server = measured.server.metrics_server
    assert server is not None and server.address is not None
    base = f"http://{LOOPBACK}:{server.address[1]}"
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        assert (await client.get(f"{base}/nothing")).status_code == 404
        assert (await client.get(f"{base}/")).headers["content-type"].startswith("text/html")
        assert (await client.post(f"{base}/metrics")).status_code == 405
        head = await client.head(f"{base}/metrics")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0


async def test_an_address_in_use_is_a_config_error_naming_the_key(measured: Tunnel) -> None:
    taken = measured.server.metrics_server
    assert taken is not None and taken.address is not None
    clash = MetricsServer(Metrics("server"), Address(LOOPBACK, taken.address[1]))
    with pytest.raises(
        ConfigError, match=r"^metrics: cannot listen on 127\.0\.0\.1:\d+: .*metrics:"
    ):
        await clash.start()


def test_every_metric_is_documented_in_the_readme_and_the_guide() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    guide = (root / "docs" / "observability.md").read_text()
    agent, server = Metrics("agent"), Metrics("server")
    agent.watch(lambda: snapshot(tunnel_state="connected", client_connections=0))
    server.watch(lambda: snapshot(circuits={}))
    agent.watch_expiry(lambda: {"client": 86400.0})
    names = {
        family.name + ("_total" if family.type == "counter" else "")
        for metrics in (agent, server)
        for family in metrics.registry.collect()
    }
    assert len(names) == 15, sorted(names)
    for name in sorted(names):
        assert f"`{name}" in readme, f"{name} is not in README.md"
        assert f"`{name}`" in guide, f"{name} is not in docs/observability.md"
