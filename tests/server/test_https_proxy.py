"""The server as an HTTPS proxy, no agent: curl, httpx and websockets through it, and the
refusals (no certificate, revoked, unlisted, wrong password, the target policy)."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve

from fluidity.config.httpsproxy import HttpsProxyAuth
from support.httpsproxy import (
    PASSWORD,
    USER,
    WAIT,
    ProxyPKI,
    client_context,
    curl_args,
    make_proxy_pki,
    proxy_config,
    proxy_url,
    raw_exchange,
    run,
    running,
)
from support.origins import RecordingOrigin


@pytest.fixture(scope="module")
def ppki(tmp_path_factory: pytest.TempPathFactory) -> ProxyPKI:
    return make_proxy_pki(tmp_path_factory.mktemp("https-proxy-pki"))


@pytest.fixture
async def second_origin() -> AsyncIterator[RecordingOrigin]:
    o = await RecordingOrigin().start()
    try:
        yield o
    finally:
        await o.close()


# -- real clients with a certificate ------------------------------------------------------


async def test_curl_forwards_absolute_form_and_connect(
    ppki: ProxyPKI, origin: RecordingOrigin
) -> None:
    async with running(proxy_config(ppki)) as server:
        forward = await run([*curl_args(server, ppki), f"{origin.url}/hi"])
        tunnelled = await run([*curl_args(server, ppki), "-p", f"{origin.url}/via-connect"])
        posted = await run([*curl_args(server, ppki), "--data-binary", "abc", f"{origin.url}/echo"])
    assert (forward.returncode, forward.stdout) == (0, b"hello"), forward.stderr
    assert (tunnelled.returncode, tunnelled.stdout) == (0, b"hello"), tunnelled.stderr
    assert (posted.returncode, posted.stdout) == (0, b"abc"), posted.stderr
    assert origin.heads[0].startswith(b"GET /hi HTTP/1.1\r\n")  # rewritten to origin-form
    assert origin.heads[1].startswith(b"GET /via-connect HTTP/1.1\r\n")
    assert server.metrics.value("fluidity_streams_opened_total", {"kind": "forward"}) == 2
    assert server.metrics.value("fluidity_streams_opened_total", {"kind": "connect"}) == 1


async def test_httpx_with_a_client_certificate(ppki: ProxyPKI, origin: RecordingOrigin) -> None:
    async with running(proxy_config(ppki)) as server:
        proxy = httpx.Proxy(proxy_url(server), ssl_context=client_context(ppki))
        async with httpx.AsyncClient(proxy=proxy, timeout=WAIT) as client:
            first = await client.get(f"{origin.url}/one")
            big = await client.get(f"{origin.url}/bytes/3000000")
            status = await client.get(f"{origin.url}/status/404")
    assert (first.status_code, first.content) == (200, b"hello")
    assert (big.status_code, len(big.content)) == (200, 3_000_000)
    assert status.status_code == 404


async def test_curl_with_the_pkcs12_bundle(ppki: ProxyPKI, origin: RecordingOrigin) -> None:
    from fluidity.pki.bundle import write_pkcs12

    bundle = write_pkcs12(ppki.directory, "alice", "bundle-password")
    async with running(proxy_config(ppki)) as server:
        args = curl_args(server, ppki, None)
        args += ["--proxy-cert-type", "P12", "--proxy-cert", f"{bundle}:bundle-password"]
        result = await run([*args, f"{origin.url}/p12"])
    assert (result.returncode, result.stdout) == (0, b"hello"), result.stderr


async def test_one_connection_keeps_alive_across_hosts(
    ppki: ProxyPKI, origin: RecordingOrigin, second_origin: RecordingOrigin
) -> None:
    requests = b"".join(
        f"GET {o.url}/k HTTP/1.1\r\nHost: 127.0.0.1:{o.port}\r\nX-Keep: Kept-Case\r\n\r\n".encode()
        for o in (origin, second_origin)
    )
    async with running(proxy_config(ppki)) as server:
        # Both requests on one TLS connection, to two different targets.
        answer = await raw_exchange(server, client_context(ppki), requests, until=b"hello", times=2)
    assert answer.count(b"HTTP/1.1 200") == 2, answer
    for o in (origin, second_origin):
        assert b"X-Keep: Kept-Case\r\n" in o.heads[0]  # header bytes kept as sent


async def test_websocket_through_connect_and_through_an_upgrade(ppki: ProxyPKI) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as ws_server, running(proxy_config(ppki)) as server:
        port = ws_server.sockets[0].getsockname()[1]
        async with ws_connect(
            f"ws://127.0.0.1:{port}/",
            proxy=proxy_url(server),
            proxy_ssl=client_context(ppki),
            open_timeout=WAIT,
        ) as ws:
            await ws.send("ping through CONNECT")
            assert await asyncio.wait_for(ws.recv(), WAIT) == "ping through CONNECT"
        upgrade = (
            f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode()
        answer = await raw_exchange(server, client_context(ppki), upgrade)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in answer


async def test_the_websocket_transport_still_works_next_to_the_proxy(
    ppki: ProxyPKI, origin: RecordingOrigin
) -> None:
    from fluidity.agent import Agent
    from support.harness import make_agent_config

    async with running(proxy_config(ppki)) as server:
        assert server.address is not None
        agent = Agent(
            make_agent_config(ppki.quickstart(), server.address[1], transport="websocket")
        )
        await agent.start()
        try:
            await agent.keeper.wait_ready(within=WAIT)
            assert agent.address is not None
            proxy = f"http://127.0.0.1:{agent.address[1]}"
            async with httpx.AsyncClient(proxy=proxy, timeout=WAIT) as client:
                via_agent = await client.get(f"{origin.url}/agent")
            direct = await run([*curl_args(server, ppki), f"{origin.url}/agentless"])
        finally:
            await agent.shutdown(drain_timeout=1.0)
    assert via_agent.content == b"hello"
    assert direct.stdout == b"hello", direct.stderr


# -- refusals -----------------------------------------------------------------------------


async def test_refusal_matrix_for_certificates(ppki: ProxyPKI, origin: RecordingOrigin) -> None:
    request = f"GET {origin.url}/x HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode()
    async with running(proxy_config(ppki, allow=["alice"])) as server:
        allowed = await raw_exchange(server, client_context(ppki, "alice"), request)
        no_cert = await raw_exchange(server, client_context(ppki, None), request)
        unlisted = await raw_exchange(server, client_context(ppki, "bob"), request)
        revoked = await raw_exchange(server, client_context(ppki, "carol"), request)
        curl_no_cert = await run([*curl_args(server, ppki, None), f"{origin.url}/x"])
        metrics = server.metrics
    assert allowed.startswith(b"HTTP/1.1 200")
    assert (no_cert, unlisted, revoked) == (b"", b"", b"")  # closed without a byte, as tunnels
    assert curl_no_cert.returncode != 0
    assert (
        metrics.value("fluidity_handshake_failures_total", {"reason": "certificate_missing"}) == 2
    )
    assert (
        metrics.value("fluidity_handshake_failures_total", {"reason": "certificate_not_allowed"})
        == 1
    )
    assert (
        metrics.value("fluidity_handshake_failures_total", {"reason": "certificate_revoked"}) == 1
    )
    assert len(origin.heads) == 1  # only alice's request reached the origin


async def test_policy_refusal_is_a_403_naming_the_rule(
    ppki: ProxyPKI, origin: RecordingOrigin
) -> None:
    async with running(proxy_config(ppki, targets=())) as server:
        refused = await run([*curl_args(server, ppki), "-i", f"{origin.url}/x"])
        closed = await run([*curl_args(server, ppki), "-i", "http://127.0.0.1:1/"])
    assert refused.stdout.startswith(b"HTTP/1.1 403"), refused.stdout
    assert b"refused by policy" in refused.stdout
    assert closed.stdout.startswith(b"HTTP/1.1 403")  # policy first: port 1 is never dialled
    assert origin.heads == []


async def test_unreachable_targets_get_the_agents_answers(ppki: ProxyPKI) -> None:
    config = proxy_config(ppki)
    config = replace(
        config,
        dial=replace(config.dial, attempts=1),
        circuit_breaker=replace(config.circuit_breaker, failures=1, reset_after=60.0),
    )
    async with running(config) as server:
        refused = await run([*curl_args(server, ppki), "-i", "http://127.0.0.1:1/"])
        tripped = await run([*curl_args(server, ppki), "-i", "http://127.0.0.1:1/"])
        tunnel = await run([*curl_args(server, ppki), "-p", "-i", "http://127.0.0.1:1/"])
        errors = server.metrics.value(
            "fluidity_target_errors_total", {"kind": "circuit_open", "status": "503"}
        )
    assert refused.stdout.startswith(b"HTTP/1.1 502"), refused.stdout
    assert b"connection refused" in refused.stdout
    assert tripped.stdout.startswith(b"HTTP/1.1 503")  # the circuit is open now
    assert b"circuit open" in tripped.stdout
    assert b"503" in tunnel.stderr or tunnel.stdout.startswith(b"HTTP/1.1 503")  # CONNECT too
    assert errors == 2


async def test_basic_credentials_instead_of_a_certificate(
    ppki: ProxyPKI,
    origin: RecordingOrigin,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TEST_PROXY_PASSWORD", PASSWORD)
    auth = HttpsProxyAuth(username=USER, password_env="TEST_PROXY_PASSWORD")
    caplog.set_level(logging.DEBUG)
    async with running(proxy_config(ppki, auth=auth)) as server:
        base = curl_args(server, ppki, None)
        good = await run([*base, "--proxy-user", f"{USER}:{PASSWORD}", f"{origin.url}/a"])
        wrong = await run([*base, "-i", "--proxy-user", f"{USER}:nope", f"{origin.url}/b"])
        missing = await run([*base, "-i", f"{origin.url}/c"])
        with_cert = await run([*curl_args(server, ppki), f"{origin.url}/d"])
    assert good.stdout == b"hello", good.stderr
    assert wrong.stdout.startswith(b"HTTP/1.1 407")
    assert b"Proxy-Authenticate: Basic" in wrong.stdout
    assert missing.stdout.startswith(b"HTTP/1.1 407")
    assert with_cert.stdout == b"hello"  # a certificate is still enough
    assert [h.split(b" ")[1] for h in origin.heads] == [b"/a", b"/d"]
    assert all(b"Proxy-Authorization" not in h for h in origin.heads)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert PASSWORD not in caplog.text and token not in caplog.text
    assert "(password)@" in caplog.text  # the user is named in the logs: the secret never


async def test_password_file_must_be_private(ppki: ProxyPKI, tmp_path: Path) -> None:
    from fluidity.errors import ConfigError
    from fluidity.server.server import Server

    secret = tmp_path / "proxy-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    auth = HttpsProxyAuth(username=USER, password_file=str(secret))
    with pytest.raises(ConfigError, match="chmod 600"):
        Server(proxy_config(ppki, auth=auth))
    secret.chmod(0o600)
    server = Server(proxy_config(ppki, auth=auth))
    assert server.https_proxy is not None
    assert server.https_proxy.credentials == (USER, PASSWORD)


async def test_off_by_default(ppki: ProxyPKI, origin: RecordingOrigin) -> None:
    config = proxy_config(ppki, websocket=False)
    config = replace(config, https_proxy=replace(config.https_proxy, enabled=False))
    async with running(config) as server:
        assert server.https_proxy is None
        result = await run([*curl_args(server, ppki), f"{origin.url}/x"])
    assert result.returncode != 0
    assert origin.heads == []
