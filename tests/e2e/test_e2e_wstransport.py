"""The WebSocket transport end to end over real sockets and real certificates: HTTP,
CONNECT and WebSocket traffic, one port for both transports, the load-balancer and
public-certificate listeners, refusals, keepalive, and TLS-inspection detection
(with an in-process inspecting relay; tests/e2e/test_e2e_mitmproxy.py uses mitmproxy)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from fluidity.agent import Agent
from fluidity.config.agent import AgentWebSocket, TransportKind
from fluidity.config.server import ServerWebSocket
from fluidity.config.values import Address, FileOrPem, WebSocketEndpoint
from fluidity.errors import (
    AuthenticationError,
    ConfigError,
    HandshakeError,
    TLSInspectionDetected,
    WebSocketRefused,
)
from fluidity.pki.certs import QuickstartPKI, ensure_quickstart_pki
from fluidity.server.server import Server
from fluidity.transport.wslink import WebSocketLink
from support.harness import (
    LOOPBACK,
    Process,
    Tunnel,
    agent_yaml,
    make_agent_config,
    make_server_config,
    server_yaml,
    start_process,
)
from support.origins import RecordingOrigin, pattern_sha256
from support.wsfix import (
    CorporateCA,
    FreezableRelay,
    InspectingRelay,
    connect_through,
    echo,
    http_through,
    make_corporate_ca,
    marker,
    running,
    websocket_through,
    ws_url,
)


@pytest.fixture
async def ws_origin() -> AsyncIterator[str]:
    async with serve(echo, LOOPBACK, 0) as server:
        yield ws_url(server)


@pytest.fixture(scope="module")
def corp(tmp_path_factory: pytest.TempPathFactory) -> CorporateCA:
    """A TLS-inspection CA and the certificate it forges for localhost."""
    return make_corporate_ca(tmp_path_factory.mktemp("corp"), "Example Corp TLS Inspection CA")


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> CorporateCA:
    """A stand-in for a public CA, and a certificate for the server's public name only."""
    return make_corporate_ca(
        tmp_path_factory.mktemp("public"), "Example Public CA", dns=("ws.fluidity.test",), ips=()
    )


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> QuickstartPKI:
    return ensure_quickstart_pki(tmp_path_factory.mktemp("stranger"))


async def start(
    pki: QuickstartPKI,
    *,
    server: dict[str, object] | None = None,
    agent: dict[str, object] | None = None,
    agent_port: int | None = None,
    wait: bool = True,
) -> Tunnel:
    """A server with ``server`` changes and an agent with ``agent`` changes, aimed at the
    server's main port (or ``agent_port``)."""
    srv = Server(make_server_config(pki, **(server or {})))
    await srv.start()
    assert srv.address is not None
    config = make_agent_config(pki, agent_port or srv.address[1], **(agent or {}))
    agt = Agent(config)
    await agt.start()
    tunnel = Tunnel(srv, agt)
    if wait:
        await tunnel.ready()
    return tunnel


@pytest.fixture
async def ws_tunnel(pki: QuickstartPKI) -> AsyncIterator[Tunnel]:
    tunnel = await start(pki, agent={"transport": "websocket"})
    try:
        yield tunnel
    finally:
        await tunnel.close()


def link_of(tunnel: Tunnel) -> WebSocketLink:
    conn = tunnel.agent.keeper.connection
    assert conn is not None
    inner = conn._transport
    assert inner is not None
    link = inner._link  # type: ignore[attr-defined]
    assert isinstance(link, WebSocketLink)
    return link


async def carries_everything(tunnel: Tunnel, origin: RecordingOrigin, ws_origin: str) -> None:
    """HTTP (a body of 5 MB), CONNECT and WebSocket traffic through ``tunnel``."""
    size = 5 * 1024 * 1024
    response = await http_through(tunnel.proxy, f"{origin.url}/bytes/{size}")
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == pattern_sha256(size)
    assert await connect_through(tunnel.proxy_port, origin.port, "/hello") == b"hello"
    text = marker()
    assert await websocket_through(tunnel.proxy, ws_origin, text) == text


# -- the transport carries everything ------------------------------------------------------


async def test_websocket_transport_carries_http_connect_and_websockets(
    ws_tunnel: Tunnel, origin: RecordingOrigin, ws_origin: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert ws_tunnel.agent.keeper.transport == "websocket"
    assert ws_tunnel.agent.status()["transport"] == "websocket"
    await carries_everything(ws_tunnel, origin, ws_origin)


async def test_both_transports_share_the_servers_one_port(
    pki: QuickstartPKI, origin: RecordingOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity.server.connection")
    tunnel = await start(pki, agent={"transport": "websocket"})
    assert tunnel.server.address is not None
    direct = Agent(make_agent_config(pki, tunnel.server.address[1]))
    await direct.start()
    try:
        await direct.keeper.wait_ready(within=10)
        assert direct.keeper.transport == "direct"
        for proxy in (tunnel.proxy, f"http://{LOOPBACK}:{direct.address[1]}"):  # type: ignore[index]
            assert (await http_through(proxy, f"{origin.url}/x")).content == b"hello"
        assert tunnel.server.activity().active_connections == 2
        assert "(websocket transport)" in caplog.text and "(direct transport)" in caplog.text
    finally:
        await direct.shutdown(drain_timeout=1)
        await tunnel.close()


async def test_inner_authentication_is_required_on_the_websocket_transport(
    pki: QuickstartPKI, stranger: QuickstartPKI
) -> None:
    # Trusts our CA, but presents a client certificate our CA did not issue.
    from fluidity.config.agent import AgentTLS

    tls = AgentTLS(
        ca=FileOrPem.from_path(pki.ca_cert),
        cert=FileOrPem.from_path(stranger.client_cert),
        key=FileOrPem.from_path(stranger.client_key),
    )
    tunnel = await start(pki, agent={"transport": "websocket", "tls": tls}, wait=False)
    try:
        failure = await tunnel.agent.keeper.failure(within=10)
        assert isinstance(failure, AuthenticationError)
        assert "authentication failed" in str(failure) and "alert" in str(failure)
        assert tunnel.server.activity().active_connections == 0
    finally:
        await tunnel.close()


async def answer_to_h2(port: int, context: ssl.SSLContext) -> bytes:
    """Connect with ``context`` (ALPN h2), send the HTTP/2 preface; the server's first
    bytes, or b"" if it closed instead (or cut the handshake itself)."""
    received = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(
                LOOPBACK, port, ssl=context, server_hostname="localhost"
            )
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            received = await reader.read(65536)
            writer.close()
    return received


async def test_the_direct_transport_still_requires_a_client_certificate(
    pki: QuickstartPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="fluidity")
    tunnel = await start(pki)
    assert tunnel.server.address is not None
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.set_alpn_protocols(["h2"])  # the direct transport, without a certificate
    try:
        assert await answer_to_h2(tunnel.server.address[1], context) == b""
        assert "the client sent no certificate: the direct transport requires one" in caplog.text
        # The same with the certificate: the server speaks HTTP/2 (its SETTINGS).
        context.load_cert_chain(pki.client_cert, pki.client_key)
        assert await answer_to_h2(tunnel.server.address[1], context) != b""
    finally:
        await tunnel.close()


async def test_the_direct_transport_still_requires_tls13(
    pki: QuickstartPKI, caplog: pytest.LogCaptureFixture
) -> None:
    # TLS 1.2 is allowed on the main port for the WebSocket transport's outer layer only.
    caplog.set_level("INFO", logger="fluidity")
    tunnel = await start(pki)
    assert tunnel.server.address is not None
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pki.client_cert, pki.client_key)
    context.set_alpn_protocols(["h2"])
    try:
        assert await answer_to_h2(tunnel.server.address[1], context) == b""
        assert "TLSv1.2 with h2: the direct transport requires TLS 1.3" in caplog.text
    finally:
        await tunnel.close()


async def test_a_wrong_path_is_a_clear_error(pki: QuickstartPKI) -> None:
    tunnel = await start(pki, wait=False)
    assert tunnel.server.address is not None
    port = tunnel.server.address[1]
    url = WebSocketEndpoint(True, LOOPBACK, port, "/nope", name="localhost")
    await tunnel.agent.shutdown(drain_timeout=0)
    agent = Agent(
        make_agent_config(pki, port, transport="websocket", websocket=AgentWebSocket(url=url))
    )
    await agent.start()
    try:
        failure = await agent.keeper.failure(within=10)
        assert isinstance(failure, WebSocketRefused) and failure.status == 404
        assert "websocket.url" in str(failure)
    finally:
        await agent.shutdown(drain_timeout=0)
        await tunnel.server.shutdown(drain_timeout=0)


async def test_with_websocket_disabled_the_main_port_is_direct_only(pki: QuickstartPKI) -> None:
    tunnel = await start(
        pki, server={"websocket": ServerWebSocket(enabled=False)}, agent={"transport": "websocket"},
        wait=False,
    )  # fmt: skip
    try:
        failure = await tunnel.agent.keeper.failure(within=10)
        assert isinstance(failure, HandshakeError)
        assert tunnel.server.activity().active_connections == 0
    finally:
        await tunnel.close()


# -- the extra listener: load balancer (plain) and public certificate ------------------------


async def test_plain_listener_behind_a_tls_terminating_load_balancer(
    pki: QuickstartPKI, origin: RecordingOrigin, ws_origin: str
) -> None:
    server_ws = ServerWebSocket(listen=Address(LOOPBACK, 0))
    srv = Server(make_server_config(pki, websocket=server_ws))
    await srv.start()
    assert srv.websocket_address is not None
    url = WebSocketEndpoint(False, LOOPBACK, srv.websocket_address[1])
    agent = Agent(
        make_agent_config(pki, 1, transport="websocket", websocket=AgentWebSocket(url=url))
    )
    await agent.start()
    tunnel = Tunnel(srv, agent)
    try:
        await tunnel.ready()
        await carries_everything(tunnel, origin, ws_origin)
    finally:
        await tunnel.close()


async def test_plain_listener_answers_health_checks(pki: QuickstartPKI) -> None:
    server_ws = ServerWebSocket(listen=Address(LOOPBACK, 0))
    srv = Server(make_server_config(pki, websocket=server_ws))
    await srv.start()
    assert srv.websocket_address is not None
    try:
        for path, status in (("/fluidity", b"426"), ("/", b"404")):
            reader, writer = await asyncio.open_connection(LOOPBACK, srv.websocket_address[1])
            writer.write(f"GET {path} HTTP/1.1\r\nHost: ws\r\n\r\n".encode())
            async with asyncio.timeout(10):
                answer = await reader.read()  # the server closes after answering
            assert answer.startswith(b"HTTP/1.1 " + status), answer
            writer.close()
    finally:
        await srv.shutdown(drain_timeout=0)


async def test_own_listener_with_a_public_certificate(
    pki: QuickstartPKI, public: CorporateCA, origin: RecordingOrigin
) -> None:
    server_ws = ServerWebSocket(
        listen=Address(LOOPBACK, 0),
        cert=FileOrPem.from_path(public.cert),
        key=FileOrPem.from_path(public.key),
    )
    srv = Server(make_server_config(pki, websocket=server_ws))
    await srv.start()
    assert srv.websocket_address is not None
    url = WebSocketEndpoint(True, LOOPBACK, srv.websocket_address[1], name="ws.fluidity.test")
    websocket = AgentWebSocket(url=url, outer_ca=FileOrPem.from_path(public.ca_cert))
    agent = Agent(make_agent_config(pki, 1, transport="websocket", websocket=websocket))
    await agent.start()
    tunnel = Tunnel(srv, agent)
    try:
        await tunnel.ready()
        assert (await http_through(tunnel.proxy, f"{origin.url}/x")).content == b"hello"
    finally:
        await tunnel.close()


async def test_public_certificate_on_the_main_port_is_picked_by_name(
    pki: QuickstartPKI, public: CorporateCA, origin: RecordingOrigin
) -> None:
    server_ws = ServerWebSocket(
        cert=FileOrPem.from_path(public.cert), key=FileOrPem.from_path(public.key)
    )
    tunnel = await start(pki, server={"websocket": server_ws})  # a direct agent: private cert
    assert tunnel.server.address is not None
    url = WebSocketEndpoint(True, LOOPBACK, tunnel.server.address[1], name="ws.fluidity.test")
    websocket = AgentWebSocket(url=url, outer_ca=FileOrPem.from_path(public.ca_cert))
    agent = Agent(make_agent_config(pki, 1, transport="websocket", websocket=websocket))
    await agent.start()
    try:
        await agent.keeper.wait_ready(within=10)
        assert agent.address is not None
        proxy = f"http://{LOOPBACK}:{agent.address[1]}"
        assert (await http_through(proxy, f"{origin.url}/x")).content == b"hello"
        assert (await http_through(tunnel.proxy, f"{origin.url}/x")).content == b"hello"
        assert tunnel.agent.keeper.transport == "direct"
    finally:
        await agent.shutdown(drain_timeout=1)
        await tunnel.close()


def test_a_public_certificate_sharing_a_name_with_the_private_one_is_refused(
    pki: QuickstartPKI, corp: CorporateCA
) -> None:
    # corp.cert names localhost, as the private server certificate does: SNI cannot choose.
    websocket = ServerWebSocket(
        cert=FileOrPem.from_path(corp.cert), key=FileOrPem.from_path(corp.key)
    )
    with pytest.raises(ConfigError, match=r"carries localhost like tls\.cert"):
        Server(make_server_config(pki, websocket=websocket))


# -- keepalive ------------------------------------------------------------------------------


async def test_websocket_pings_keep_the_link_and_a_dead_path_is_dropped(
    pki: QuickstartPKI,
) -> None:
    server_ws = ServerWebSocket(listen=Address(LOOPBACK, 0))
    srv = Server(make_server_config(pki, websocket=server_ws))
    await srv.start()
    assert srv.websocket_address is not None
    relay = await FreezableRelay((LOOPBACK, srv.websocket_address[1])).start()
    url = WebSocketEndpoint(False, LOOPBACK, relay.port)
    agent = Agent(
        make_agent_config(
            pki, 1, transport="websocket",
            websocket=AgentWebSocket(url=url, ping_interval=0.05),
            keepalive_interval=3600.0,  # HTTP/2 PINGs out of the picture: WebSocket pings alone
            keepalive_timeout=0.5,
        )
    )  # fmt: skip
    await agent.start()
    tunnel = Tunnel(srv, agent)
    async with running(relay):
        try:
            await tunnel.ready()
            conn = agent.keeper.connection
            assert conn is not None
            link = link_of(tunnel)
            with pytest.raises(TimeoutError):  # alive across 20 ping intervals
                await asyncio.wait_for(asyncio.shield(conn.closed), 1.0)
            assert link.pongs_received >= 5
            relay.freeze()
            reason = await asyncio.wait_for(asyncio.shield(conn.closed), 5)
            assert "did not answer a WebSocket ping" in reason
        finally:
            await tunnel.close()


# -- TLS inspection ---------------------------------------------------------------------------


async def inspected(
    pki: QuickstartPKI, corp: CorporateCA, transport: TransportKind
) -> tuple[Tunnel, InspectingRelay]:
    """An agent whose way to the server passes an inspecting relay that forges certificates
    with ``corp``; the agent trusts ``corp`` for the WebSocket transport's outer layer."""
    srv = Server(make_server_config(pki))
    await srv.start()
    assert srv.address is not None
    relay = await InspectingRelay(corp, (LOOPBACK, srv.address[1]), pki.ca_cert).start()
    websocket = AgentWebSocket(outer_ca=FileOrPem.from_path(corp.ca_cert))
    config = make_agent_config(pki, relay.port, transport=transport, websocket=websocket)
    agent = Agent(config)
    await agent.start()
    return Tunnel(srv, agent), relay


async def test_direct_transport_through_inspection_names_the_inspecting_issuer(
    pki: QuickstartPKI, corp: CorporateCA
) -> None:
    tunnel, relay = await inspected(pki, corp, "direct")
    async with running(relay):
        try:
            failure = await tunnel.agent.keeper.failure(within=10)
            assert isinstance(failure, TLSInspectionDetected)
            message = str(failure)
            assert (
                "TLS inspection detected: the certificate for localhost was issued by "
                "CN=Example Corp TLS Inspection CA, not by your Fluidity CA"
            ) in message
            assert "transport: websocket (or auto)" in message
            assert tunnel.agent.keeper.transport == "direct"
        finally:
            await tunnel.close()


async def test_auto_switches_to_websocket_through_inspection_and_says_so_once(
    pki: QuickstartPKI,
    corp: CorporateCA,
    origin: RecordingOrigin,
    ws_origin: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tunnel, relay = await inspected(pki, corp, "auto")
    async with running(relay):
        try:
            await tunnel.ready()
            assert tunnel.agent.keeper.transport == "websocket"
            secret = marker()
            response = await http_through(tunnel.proxy, f"{origin.url}/{secret}")
            assert response.content == b"hello"
            assert await connect_through(tunnel.proxy_port, origin.port, f"/{secret}") == b"hello"
            assert await websocket_through(tunnel.proxy, ws_origin, secret) == secret
            # The relay saw the upgrade in clear, and never the inner plaintext.
            assert b"GET /fluidity HTTP/1.1" in relay.seen
            assert secret.encode() not in relay.seen
            assert origin.heads[-1].startswith(f"GET /{secret} ".encode())
            switches = [r for r in caplog.records if "switching to the WebSocket" in r.message]
            assert len(switches) == 1
            assert "TLS inspection detected" in switches[0].message
        finally:
            await tunnel.close()


async def test_a_verification_failure_that_is_not_inspection_is_reported_as_such(
    pki: QuickstartPKI,
) -> None:
    # Our own CA's server certificate, reached under a name it does not carry.
    tunnel = await start(pki, agent={"server_name": "elsewhere.example"}, wait=False)
    try:
        failure = await tunnel.agent.keeper.failure(within=10)
        assert "cannot verify the server certificate" in str(failure)
        assert not isinstance(failure, TLSInspectionDetected)
    finally:
        await tunnel.close()


async def test_websocket_outer_layer_untrusted_names_the_issuer_and_the_fix(
    pki: QuickstartPKI, corp: CorporateCA
) -> None:
    srv = Server(make_server_config(pki))
    await srv.start()
    assert srv.address is not None
    relay = await InspectingRelay(corp, (LOOPBACK, srv.address[1]), pki.ca_cert).start()
    agent = Agent(make_agent_config(pki, relay.port, transport="websocket"))  # no outer_ca
    await agent.start()
    tunnel = Tunnel(srv, agent)
    async with running(relay):
        try:
            message = str(await agent.keeper.failure(within=10))
            assert "issued by CN=Example Corp TLS Inspection CA" in message
            assert "websocket.outer_ca" in message
        finally:
            await tunnel.close()


# -- real processes ------------------------------------------------------------------------


async def test_fluidity_processes_speak_the_websocket_transport(
    pki: QuickstartPKI,
    tmp_path: Path,
    processes: list[Process],
    origin: RecordingOrigin,
    ws_origin: str,
) -> None:
    """``fluidity server`` and ``fluidity agent --transport websocket`` (uvloop, YAML)."""
    server = start_process("server", server_yaml(pki), tmp_path)
    processes.append(server)
    config = agent_yaml(pki, server.port, websocket={"ping_interval": 0.2})
    agent = start_process("agent", config, tmp_path, args=("--transport", "websocket"))
    processes.append(agent)
    proxy = f"http://{LOOPBACK}:{agent.port}"
    assert (await http_through(proxy, f"{origin.url}/x")).content == b"hello"
    assert await connect_through(agent.port, origin.port, "/y") == b"hello"
    text = marker()
    assert await websocket_through(proxy, ws_origin, text) == text
    assert "tunnel up after" in agent.log()
    assert "(websocket transport)" in agent.log()
    assert "(websocket transport)" in server.log()
