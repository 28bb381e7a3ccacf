"""The server's dashboard on its metrics listener: the agents, refusals, breakers, drain
state and certificate dates, from the same counters as /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fluidity.config.server import CircuitBreakerConfig, DialConfig, TargetsConfig
from fluidity.config.values import Address
from fluidity.pki.certs import QuickstartPKI
from support.harness import LOOPBACK, Tunnel, start_tunnel
from support.origins import RecordingOrigin


@pytest.fixture
async def watched(pki: QuickstartPKI, origin: RecordingOrigin) -> AsyncIterator[Tunnel]:
    tunnel = await start_tunnel(
        pki,
        server_changes={
            "metrics": Address(LOOPBACK, 0),
            "targets": TargetsConfig(allow=("127.0.0.0/8",), ports=(origin.port, 9)),
            "dial": DialConfig(attempts=1),
            "circuit_breaker": CircuitBreakerConfig(failures=1, reset_after=60.0),
        },
    )
    try:
        yield tunnel
    finally:
        await tunnel.close()


async def view(tunnel: Tunnel, path: str = "/fluidity/dashboard.json") -> httpx.Response:
    listener = tunnel.server.metrics_server
    assert listener is not None and listener.address is not None
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.get(f"http://{LOOPBACK}:{listener.address[1]}{path}")


async def test_the_server_page_lists_agents_refusals_breakers_and_certificates(
    watched: Tunnel, origin: RecordingOrigin
) -> None:
    async with httpx.AsyncClient(proxy=watched.proxy, trust_env=False, timeout=20) as client:
        assert (await client.get(f"{origin.url}/bytes/100000")).status_code == 200
        assert (await client.get(f"http://{LOOPBACK}:1/")).status_code == 403
        assert (await client.get(f"http://{LOOPBACK}:9/")).status_code == 502
        assert (await client.get(f"http://{LOOPBACK}:9/")).status_code == 503
    data: dict[str, Any] = (await view(watched)).json()
    assert data["role"] == "server"
    assert data["server"]["draining"] is False
    assert data["server"]["bytes_out"] == watched.server.snapshot().bytes_sent > 100_000
    [agent] = data["agents"]
    assert agent["agent"].startswith("quickstart@127.0.0.1:")
    assert agent["transport"] == "direct"
    assert agent["cert_expires"] and agent["cert_expires"][:2] == "20"
    assert data["refusals"] == {"policy_refused": 1.0, "dial_refused": 1.0, "circuit_open": 1.0}
    assert data["breakers"] == [{"target": "127.0.0.1:9", "state": "open"}]
    kinds = [entry["kind"] for entry in data["history"]["errors"]]
    assert kinds == ["circuit_open", "dial_refused", "policy_refused"]
    assert "refused by policy" in data["history"]["errors"][2]["message"]
    names = [cert["name"] for cert in data["certificates"]]
    assert names == ["server certificate", "CA"]
    assert all(cert["days_left"] > 0 for cert in data["certificates"])


async def test_the_page_is_on_the_metrics_listener_and_only_for_an_ip_host(
    watched: Tunnel,
) -> None:
    page = await view(watched, "/")
    assert page.status_code == 200 and b"fluidity" in page.content
    listener = watched.server.metrics_server
    assert listener is not None and listener.address is not None
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        url = f"http://{LOOPBACK}:{listener.address[1]}/fluidity/dashboard.json"
        rebound = await client.get(url, headers={"Host": "evil.example"})
        action = await client.post(f"http://{LOOPBACK}:{listener.address[1]}/fluidity/reconnect")
    assert rebound.status_code == 421
    assert action.status_code == 405  # the server's page takes no action


async def test_draining_shows(watched: Tunnel) -> None:
    for conn in watched.server.tunnels.live:
        conn.refuse_new_streams()
    watched.server._draining = True  # what shutdown() sets first, without shutting down
    assert (await view(watched)).json()["server"]["draining"] is True
