"""The dashboard's wake and kill buttons against a fake control plane on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fake_control_plane import FakeControlPlane
from lifecycle_world import REGION

from fluidity.agent import Agent
from fluidity.lifecycle.client import LifecycleConfig
from fluidity.observe.dashboard import ACTION_HEADER
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from support.harness import LOOPBACK, make_agent_config, make_server_config
from support.transfers import wait_for


@pytest.fixture
def plane(aws_credentials: None) -> Iterator[FakeControlPlane]:
    ready = (200, {"status": "ready", "address": LOOPBACK})
    fake = FakeControlPlane(
        {"/wake": [ready], "/query": [ready], "/kill": [(200, {"status": "stopped"})]}
    )
    with fake.running():
        yield fake


async def test_the_buttons_kill_and_wake_the_cloud_server(
    pki: QuickstartPKI, plane: FakeControlPlane
) -> None:
    server = Server(make_server_config(pki))
    await server.start()
    assert server.address is not None
    lifecycle = LifecycleConfig(
        wake_url=plane.url("/wake"),
        query_url=plane.url("/query"),
        kill_url=plane.url("/kill"),
        region=REGION,
        ready_timeout=20,
    )
    agent = Agent(make_agent_config(pki, server.address[1], lifecycle=lifecycle))
    try:
        async with asyncio.timeout(30):
            await agent.start()
            await agent.keeper.wait_ready(within=10)
        assert agent.address is not None
        base = f"http://{LOOPBACK}:{agent.address[1]}"
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            view = (await client.get(f"{base}/fluidity/dashboard.json")).json()
            assert view["actions"] == {"reconnect": True, "wake": True, "kill": True}
            press = {ACTION_HEADER: "1"}
            started = await client.post(f"{base}/fluidity/kill", headers=press)
            assert started.json()["action"]["state"] == "running"
            await wait_for(lambda: (agent.console.action or {})["state"] != "running", 10)
            assert agent.console.action == {
                **agent.console.action,
                "name": "kill",
                "state": "done",
                "message": "the cloud server is stopped",
            }
            assert plane.calls()[-1] == "POST /kill"
            await client.post(f"{base}/fluidity/wake", headers=press)
            await wait_for(lambda: (agent.console.action or {})["state"] != "running", 10)
            assert (agent.console.action or {})["message"] == f"the server is up at {LOOPBACK}"
            await wait_for(lambda: agent.keeper.reconnects == 1, within=5)
            await agent.keeper.wait_ready(within=10)
        assert plane.calls().count("POST /wake") == 2
    finally:
        await agent.shutdown(drain_timeout=1)
        await server.shutdown(drain_timeout=1)
