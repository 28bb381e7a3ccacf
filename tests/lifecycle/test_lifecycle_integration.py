"""The lifecycle wired into agent and server: wake before connecting, kill on exit, EMF metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator

import pytest
from fake_control_plane import STARTING, Answer, FakeControlPlane
from lifecycle_world import REGION

from fluidity.agent import Agent
from fluidity.config.values import Address
from fluidity.lifecycle.client import LifecycleConfig
from fluidity.lifecycle.cloudwatch import CloudWatchConfig, EmfSink, emf_document, metric_data
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Activity, Server
from support.harness import make_agent_config, make_server_config

READY_HERE: Answer = (200, {"status": "ready", "address": "127.0.0.1"})


@pytest.fixture
def plane(aws_credentials: None) -> Iterator[FakeControlPlane]:
    fake = FakeControlPlane(
        {
            "/wake": [STARTING],
            "/query": [STARTING, READY_HERE],
            "/kill": [(200, {"status": "stopped"})],
        }
    )
    with fake.running():
        yield fake


async def test_agent_wakes_the_server_connects_to_its_address_and_kills_it_on_exit(
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
        kill_on_exit=True,
        ready_timeout=20,
    )
    # The configured host is a placeholder: the control plane says where the server is.
    config = make_agent_config(pki, server.address[1], lifecycle=lifecycle)
    config = dataclasses.replace(config, server=Address("192.0.2.1", server.address[1]))
    agent = Agent(config)
    try:
        async with asyncio.timeout(30):
            await agent.start()
            await agent.keeper.wait_ready(within=10)
        assert agent.keeper.host == "127.0.0.1"
        assert plane.calls()[:3] == ["POST /wake", "GET /query", "GET /query"]
    finally:
        await agent.shutdown(drain_timeout=1)
        await server.shutdown(drain_timeout=1)
    assert plane.calls()[-1] == "POST /kill"


def test_emf_document_carries_the_three_metrics_with_the_service_dimension() -> None:
    data = metric_data("fluidity", Activity(2, 5, 1_700_000_000.0))
    document = emf_document("Fluidity", data, now=1_700_000_001.5)
    directive = document["_aws"]["CloudWatchMetrics"][0]
    assert document["_aws"]["Timestamp"] == 1_700_000_001_500
    assert directive["Namespace"] == "Fluidity"
    assert directive["Dimensions"] == [["ServiceName"]]
    assert [m["Name"] for m in directive["Metrics"]] == [
        "ActiveConnections",
        "ActiveStreams",
        "LastActivityEpochSeconds",
    ]
    assert document["ServiceName"] == "fluidity"
    assert (document["ActiveConnections"], document["ActiveStreams"]) == (2.0, 5.0)
    assert document["LastActivityEpochSeconds"] == 1_700_000_000.0


async def test_server_with_cloudwatch_publishes_emf_lines_on_stdout(
    pki: QuickstartPKI, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_server_config(pki, cloudwatch=CloudWatchConfig(service="svc", interval=0.05))
    server = Server(config)
    await server.start()
    try:
        lines: list[str] = []
        async with asyncio.timeout(10):
            while len(lines) < 2:  # bounded by the timeout: the publisher runs in a thread
                lines += [line for line in capsys.readouterr().out.splitlines() if line]
                await asyncio.sleep(0.02)
    finally:
        await server.shutdown(drain_timeout=1)
    document = json.loads(lines[0])
    assert document["ServiceName"] == "svc"
    assert document["ActiveConnections"] == 0.0
    assert "LastActivityEpochSeconds" in document


def test_emf_sink_writes_one_json_line_per_snapshot() -> None:
    import io

    stream = io.StringIO()
    sink = EmfSink(stream, clock=lambda: 1.0)
    sink.put("Fluidity", metric_data("svc", Activity(0, 0, 0.0)))
    sink.put("Fluidity", metric_data("svc", Activity(1, 1, 1.0)))
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["ActiveStreams"] for line in lines] == [0.0, 1.0]
