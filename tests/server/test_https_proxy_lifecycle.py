"""The HTTPS proxy's connections over their life: limits, TLS versions, revocation on
reload, and the drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from fluidity.config.server import ClientsConfig
from fluidity.pki.revocation import revoke
from fluidity.server.policyreload import ConfigFile
from fluidity.server.server import Server
from support.httpsproxy import (
    LOOPBACK,
    WAIT,
    ProxyPKI,
    client_context,
    make_proxy_pki,
    proxy_config,
    raw_exchange,
    running,
)
from support.origins import RecordingOrigin

FAILURES = "fluidity_handshake_failures_total"


@pytest.fixture
def ppki(tmp_path: Path) -> ProxyPKI:
    return make_proxy_pki(tmp_path)  # per test: these tests revoke certificates


@contextlib.asynccontextmanager
async def connected(
    server: Server, context: ssl.SSLContext
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    assert server.address is not None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(LOOPBACK, server.address[1], ssl=context, server_hostname=LOOPBACK),
        WAIT,
    )
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, end: bytes
) -> bytes:
    writer.write(request)
    return await asyncio.wait_for(reader.readuntil(end), WAIT)


async def ended(reader: asyncio.StreamReader) -> bool:
    """Whether the server ended the connection (EOF or a reset) within WAIT."""
    try:
        return await asyncio.wait_for(reader.read(65536), WAIT) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def connect_request(origin: RecordingOrigin) -> bytes:
    authority = f"127.0.0.1:{origin.port}"
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()


def get(origin: RecordingOrigin, path: str) -> bytes:
    return f"GET {origin.url}{path} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode()


async def test_a_reload_that_revokes_a_client_ends_its_live_proxy_connection(
    ppki: ProxyPKI, origin: RecordingOrigin
) -> None:
    connect = connect_request(origin)
    async with (
        running(proxy_config(ppki)) as server,
        connected(server, client_context(ppki, "alice")) as (alice_r, alice_w),
        connected(server, client_context(ppki, "bob")) as (bob_r, bob_w),
    ):
        assert b" 200 " in await exchange(bob_r, bob_w, connect, b"\r\n\r\n")
        assert b"hello" in await exchange(alice_r, alice_w, get(origin, "/a"), b"hello")
        revoke(ppki.directory, "bob")
        assert server.tls.poll()
        assert await ended(bob_r)
        assert b"hello" in await exchange(alice_r, alice_w, get(origin, "/b"), b"hello")


async def test_a_client_taken_off_clients_allow_loses_its_proxy_connection(
    ppki: ProxyPKI, origin: RecordingOrigin
) -> None:
    """A policy reload reaches the HTTPS proxy as it reaches tunnels: the unlisted client's
    live connection ends, a new one is refused, the listed client carries on."""
    listed = proxy_config(ppki, allow=["alice", "bob"])
    current = {"config": listed}
    server = Server(listed, ConfigFile(None, lambda: current["config"]))
    await server.start()
    connect = connect_request(origin)
    try:
        async with (
            connected(server, client_context(ppki, "alice")) as (alice_r, alice_w),
            connected(server, client_context(ppki, "bob")) as (bob_r, bob_w),
        ):
            assert b" 200 " in await exchange(bob_r, bob_w, connect, b"\r\n\r\n")
            current["config"] = replace(listed, clients=ClientsConfig(allow=("alice",)))
            assert server.reload("SIGHUP")
            assert await ended(bob_r)
            assert b"hello" in await exchange(alice_r, alice_w, get(origin, "/a"), b"hello")
        async with connected(server, client_context(ppki, "bob")) as (again_r, again_w):
            again_w.write(get(origin, "/b"))
            assert await ended(again_r)
    finally:
        await server.shutdown(drain_timeout=1.0)


async def test_proxy_connections_count_against_max_tunnels(
    ppki: ProxyPKI, origin: RecordingOrigin
) -> None:
    config = proxy_config(ppki)
    config = replace(config, limits=replace(config.limits, max_tunnels=1))
    async with (
        running(config) as server,
        connected(server, client_context(ppki)) as (first_r, first_w),
    ):
        assert b"hello" in await exchange(first_r, first_w, get(origin, "/1"), b"hello")
        second = await raw_exchange(server, client_context(ppki), get(origin, "/2"))
    assert second == b""
    assert [h.split(b" ")[1] for h in origin.heads] == [b"/1"]


async def test_tls_12_is_refused_even_where_the_websocket_transport_allows_it(
    ppki: ProxyPKI, origin: RecordingOrigin
) -> None:
    old = client_context(ppki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    async with running(proxy_config(ppki, websocket=True)) as server:
        answer = await raw_exchange(server, old, get(origin, "/old"))
        refused = server.metrics.value(FAILURES, {"reason": "protocol_version"})
    assert answer == b""
    assert refused == 1
    assert origin.heads == []


async def test_shutdown_closes_idle_connections_and_cuts_busy_ones_at_the_deadline(
    ppki: ProxyPKI, origin: RecordingOrigin
) -> None:
    connect = connect_request(origin)
    server = Server(proxy_config(ppki))
    await server.start()
    try:
        async with (
            connected(server, client_context(ppki)) as (idle_r, idle_w),
            connected(server, client_context(ppki)) as (busy_r, busy_w),
        ):
            assert b"hello" in await exchange(idle_r, idle_w, get(origin, "/idle"), b"hello")
            assert b" 200 " in await exchange(busy_r, busy_w, connect, b"\r\n\r\n")
            shutdown = asyncio.create_task(server.shutdown(drain_timeout=0.5))
            assert await ended(idle_r)  # between requests: closed at once
            assert not shutdown.done()  # the CONNECT tunnel holds the drain open...
            await asyncio.wait_for(shutdown, WAIT)
            assert await ended(busy_r)  # ...until the deadline cuts it
    finally:
        await server.shutdown(drain_timeout=0)
    assert server.https_proxy is not None and not server.https_proxy.connections


async def test_with_the_websocket_transport_off_agents_and_proxy_clients_share_the_port(
    ppki: ProxyPKI, origin: RecordingOrigin
) -> None:
    from fluidity.agent import Agent
    from support.harness import make_agent_config
    from support.secpki import probe

    h2_no_cert = client_context(ppki, None)
    h2_no_cert.set_alpn_protocols(["h2"])
    async with running(proxy_config(ppki, websocket=False)) as server:
        assert server.address is not None
        agent = Agent(make_agent_config(ppki.quickstart(), server.address[1]))
        await agent.start()
        try:
            await agent.keeper.wait_ready(within=WAIT)
            assert agent.keeper.transport == "direct"
            via_proxy = await raw_exchange(server, client_context(ppki), get(origin, "/p"))
            refused = await probe(server.address[1], h2_no_cert, server_hostname=LOOPBACK)
        finally:
            await agent.shutdown(drain_timeout=1.0)
        missing = server.metrics.value(FAILURES, {"reason": "certificate_missing"})
    assert via_proxy.startswith(b"HTTP/1.1 200")
    assert not refused.accepted  # h2 without a certificate: still no tunnel
    assert missing == 1


async def test_an_idle_tunnel_ends_after_the_stream_idle_timeout(
    ppki: ProxyPKI, origin: RecordingOrigin
) -> None:
    config = proxy_config(ppki)
    config = replace(config, limits=replace(config.limits, stream_idle_timeout=0.3))
    async with (
        running(config) as server,
        connected(server, client_context(ppki)) as (reader, writer),
    ):
        assert b" 200 " in await exchange(reader, writer, connect_request(origin), b"\r\n\r\n")
        # Bytes keep it open; then silence ends it.
        writer.write(b"GET /alive HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"hello" in await asyncio.wait_for(reader.readuntil(b"hello"), WAIT)
        assert await ended(reader)
