"""Through a real TLS-inspecting proxy: mitmproxy on loopback, as the agent's corporate
upstream proxy. The direct transport fails with the TLS-inspection diagnosis; the
WebSocket transport (chosen, or found by ``auto``) carries HTTP, CONNECT and WebSocket
traffic; and mitmproxy's captured flows hold the WebSocket upgrade and binary messages
only, never the tunnel's plaintext."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from fluidity.agent import Agent
from fluidity.config.agent import AgentWebSocket, TransportKind
from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.config.values import FileOrPem
from fluidity.errors import TLSInspectionDetected
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from support.harness import LOOPBACK, Tunnel, make_agent_config, make_server_config
from support.mitmfix import Mitmdump, find_or_install_mitmdump
from support.origins import RecordingOrigin
from support.wsfix import connect_through, echo, http_through, marker, websocket_through, ws_url


@pytest.fixture(scope="session")
def mitmdump_executable() -> Path:
    executable, why = find_or_install_mitmdump()
    if executable is None:
        pytest.skip(why)
    return executable


@pytest.fixture
def mitm(mitmdump_executable: Path, pki: QuickstartPKI, tmp_path: Path) -> Iterator[Mitmdump]:
    proxy = Mitmdump(mitmdump_executable, tmp_path / "mitm", pki.ca_cert).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
async def ws_origin() -> AsyncIterator[str]:
    async with serve(echo, LOOPBACK, 0) as server:
        yield ws_url(server)


async def through_mitmproxy(pki: QuickstartPKI, mitm: Mitmdump, transport: TransportKind) -> Tunnel:
    """A server, and an agent whose only way out is mitmproxy; the agent trusts
    mitmproxy's CA for the WebSocket transport's outer layer only."""
    server = Server(make_server_config(pki))
    await server.start()
    assert server.address is not None
    config = make_agent_config(
        pki,
        server.address[1],
        transport=transport,
        upstream_proxy=UpstreamProxyConfig(url=mitm.url),
        websocket=AgentWebSocket(outer_ca=FileOrPem.from_path(mitm.ca_cert)),
    )
    agent = Agent(config)
    await agent.start()
    return Tunnel(server, agent)


async def test_direct_transport_through_mitmproxy_reports_tls_inspection(
    pki: QuickstartPKI, mitm: Mitmdump
) -> None:
    tunnel = await through_mitmproxy(pki, mitm, "direct")
    try:
        failure = await tunnel.agent.keeper.failure(within=20)
        assert isinstance(failure, TLSInspectionDetected), failure
        assert str(failure).startswith(
            "TLS inspection detected: the certificate for localhost was issued by "
            "O=mitmproxy,CN=mitmproxy, not by your Fluidity CA"
        )
        assert tunnel.server.activity().active_connections == 0
        assert tunnel.agent.keeper.transport == "direct"
    finally:
        await tunnel.close()
    mitm.stop()
    assert "Client TLS handshake failed" in mitm.log()  # mitmproxy did intercept
    assert not [f for f in mitm.summary if f.get("request")]  # nothing got through


@pytest.mark.parametrize("transport", ["websocket", "auto"])
async def test_websocket_transport_through_mitmproxy_hides_everything_inside(
    pki: QuickstartPKI,
    mitm: Mitmdump,
    origin: RecordingOrigin,
    ws_origin: str,
    transport: TransportKind,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = marker()
    tunnel = await through_mitmproxy(pki, mitm, transport)
    try:
        await tunnel.ready()
        assert tunnel.agent.keeper.transport == "websocket"
        response = await http_through(tunnel.proxy, f"{origin.url}/{secret}?q={secret}")
        assert response.content == b"hello"
        assert await connect_through(tunnel.proxy_port, origin.port, f"/{secret}") == b"hello"
        assert await websocket_through(tunnel.proxy, ws_origin, secret) == secret
        assert sum(secret.encode() in head for head in origin.heads) == 2  # they did arrive
        # Control: what mitmproxy carries in clear does land in its dump.
        control = marker()
        assert (await http_through(mitm.url, f"{origin.url}/{control}")).content == b"hello"
    finally:
        await tunnel.close()
    switches = [r for r in caplog.records if "switching to the WebSocket" in r.message]
    assert len(switches) == (1 if transport == "auto" else 0)

    mitm.stop()
    dump = mitm.dump.read_bytes()
    assert control.encode() in dump
    assert secret.encode() not in dump
    assert secret.lower().encode() not in dump.lower()
    tunnel_flows = [f for f in mitm.summary if f["request"] != f"GET /{control}"]
    assert tunnel_flows, mitm.log()
    for flow in tunnel_flows:
        assert flow["request"] == "GET /fluidity" and flow["status"] == 101, flow
        assert flow["request_body"] == 0
        messages = flow["messages"]
        assert isinstance(messages, list) and messages
        assert {m["type"] for m in messages} == {"BINARY"}
        assert {m["from_client"] for m in messages} == {True, False}
