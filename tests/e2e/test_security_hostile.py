"""Hostile clients against the real agent and server, over real sockets.

The agent's HTTP side must answer malformed, oversized and slow requests with
the right status without opening a tunnel stream, and keep serving legitimate
clients while hundreds of slow ones hang on. The server must shrug off a flood
of silent and garbage TLS connections, logging each failed handshake as one
line, while a legitimate agent gets its tunnel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fluidity.agent import Agent
from fluidity.config.agent import AuthConfig
from fluidity.config.server import LimitsConfig
from fluidity.config.values import Address
from fluidity.errors import ConfigError
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from support.harness import (
    Tunnel,
    agent_yaml,
    make_agent_config,
    make_server_config,
    start_tunnel,
)
from support.origins import RecordingOrigin

WAIT = 10.0


@contextlib.asynccontextmanager
async def tunnel_with(pki: QuickstartPKI, **agent_changes: object) -> AsyncIterator[Tunnel]:
    t = await start_tunnel(pki, **agent_changes)
    try:
        yield t
    finally:
        await t.close()


async def exchange(port: int, data: bytes, *, read_body: bool = True) -> tuple[int, bytes, bytes]:
    """Send ``data`` to the agent; the status, the head and (until EOF) the body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        body = await asyncio.wait_for(reader.read(), WAIT) if read_body else b""
        return int(head.split(b" ", 2)[1]), head, body
    finally:
        writer.transport.abort()


# -- the agent's HTTP side -------------------------------------------------------------


async def test_a_head_over_64_kib_gets_431_and_no_stream(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    big = b"X-Filler: " + b"a" * 70_000 + b"\r\n"
    request = f"GET {origin.url}/ HTTP/1.1\r\nHost: x\r\n".encode() + big + b"\r\n"
    status, _, body = await exchange(tunnel.proxy_port, request)
    assert status == 431 and b"over 65536 bytes" in body
    assert tunnel.server.streams.requested == 0 and origin.heads == []


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x00\x01\x02garbage\r\n\r\n", id="binary"),
        pytest.param(b"GET\r\n\r\n", id="no-target"),
        pytest.param(b"GET http://example.com/ HTTP/1.1 extra\r\n\r\n", id="extra-words"),
        pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40, id="tls"),
    ],
)
async def test_a_garbage_request_line_gets_400(tunnel: Tunnel, garbage: bytes) -> None:
    status, _, _ = await exchange(tunnel.proxy_port, garbage)
    assert status == 400
    assert tunnel.server.streams.requested == 0


@pytest.mark.parametrize(
    "authority",
    [
        "example.com",
        ":443",
        "example.com:",
        "example.com:99999",
        "example.com:0",
        "user@example.com:443",
        "example.com:443/path",
        "[::1:443",
        "exa%00mple.com:443",
    ],
)
async def test_a_connect_with_a_malformed_authority_gets_400_and_opens_nothing(
    tunnel: Tunnel, authority: str
) -> None:
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    status, _, _ = await exchange(tunnel.proxy_port, request)
    assert status == 400
    assert tunnel.server.streams.requested == 0


async def test_a_head_that_arrives_too_slowly_gets_408_and_the_connection_closes(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    async with tunnel_with(pki, head_timeout=0.3) as t:
        reader, writer = await asyncio.open_connection("127.0.0.1", t.proxy_port)
        try:
            writer.write(f"GET {origin.url}/ HTTP/1.1\r\nHost: ".encode())
            answer = await asyncio.wait_for(reader.read(), WAIT)  # until the agent closes
        finally:
            writer.transport.abort()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert t.server.streams.requested == 0


async def test_two_hundred_slow_clients_do_not_hold_up_a_legitimate_one(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    slow: list[asyncio.StreamWriter] = []
    try:
        for i in range(200):
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", tunnel.proxy_port), WAIT
            )
            writer.write(f"GET {origin.url}/slow/{i} HTTP/1.1\r\nHost: slo".encode())
            slow.append(writer)
        request = f"GET {origin.url}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, _, body = await exchange(tunnel.proxy_port, request.encode())
        assert status == 200 and body == b"hello"
        assert len(tunnel.agent.clients) >= 200, "the slow clients were still connected"
        assert all(not w.transport.is_closing() for w in slow)
    finally:
        for writer in slow:
            writer.transport.abort()


# -- the agent's listener on another machine's reach ----------------------------------


def test_a_listener_others_can_reach_refuses_to_start_without_credentials(
    pki: QuickstartPKI,
) -> None:
    config = make_agent_config(pki, 1, listen=Address("0.0.0.0", 0))
    with pytest.raises(ConfigError, match=r"reachable from other machines.*needs credentials"):
        Agent(config)


def test_the_agent_program_exits_2_when_it_would_listen_openly_without_credentials(
    pki: QuickstartPKI, tmp_path: Path
) -> None:
    import subprocess
    import sys

    import yaml

    config = agent_yaml(pki, 1, listen="0.0.0.0:0")
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "fluidity.cli", "agent", "--config", "agent.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "needs credentials" in result.stderr and "auth:" in result.stderr


async def test_an_open_listener_asks_for_proxy_credentials(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    auth = AuthConfig(username="alice", password="s3cret-pass")
    async with tunnel_with(pki, listen=Address("0.0.0.0", 0), auth=auth) as t:
        target = f"127.0.0.1:{origin.port}"
        bare = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        good = base64.b64encode(b"alice:s3cret-pass").decode()
        bad = base64.b64encode(b"alice:wrong").decode()
        status, head, _ = await exchange(t.proxy_port, f"{bare}\r\n".encode())
        assert status == 407 and b'Proxy-Authenticate: Basic realm="fluidity"' in head
        status, _, _ = await exchange(
            t.proxy_port, f"{bare}Proxy-Authorization: Basic {bad}\r\n\r\n".encode()
        )
        assert status == 407
        assert t.server.streams.requested == 0
        status, _, _ = await exchange(
            t.proxy_port,
            f"{bare}Proxy-Authorization: Basic {good}\r\n\r\n".encode(),
            read_body=False,
        )
        assert status == 200 and t.server.streams.requested == 1
        # The same port speaks SOCKS5: without username/password it offers nothing.
        reader, writer = await asyncio.open_connection("127.0.0.1", t.proxy_port)
        try:
            writer.write(b"\x05\x01\x00")  # version 5, one method: no authentication
            assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\x05\xff"
        finally:
            writer.transport.abort()
        assert t.server.streams.requested == 1


# -- the server's TLS listener under a flood ---------------------------------------------


async def test_a_flood_of_silent_and_garbage_connections_does_not_starve_an_agent(
    pki: QuickstartPKI, origin: RecordingOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    config = make_server_config(pki, limits=LimitsConfig(handshake_timeout=1.0))
    server = Server(config)
    await server.start()
    assert server.address is not None
    port = server.address[1]
    flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    agent: Agent | None = None
    try:
        for i in range(200):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), WAIT
            )
            if i % 2:
                writer.write(os.urandom(512))  # garbage where a ClientHello should be
            flood.append((reader, writer))
        agent = Agent(make_agent_config(pki, port))
        await agent.start()
        await agent.keeper.wait_ready(within=WAIT)
        assert agent.address is not None
        request = f"GET {origin.url}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, _, body = await exchange(agent.address[1], request.encode())
        assert status == 200 and body == b"hello"
        for reader, _ in flood:  # silent ones are cut at the handshake timeout
            await asyncio.wait_for(_drain(reader), WAIT)
    finally:
        for _, writer in flood:
            writer.transport.abort()
        if agent is not None:
            await agent.shutdown(drain_timeout=0.5)
        await server.shutdown(drain_timeout=0.5)
    assert server.acceptor.handshakes_failed == 200
    lines = [r for r in caplog.records if r.name == "fluidity.transport.tlsaccept"]
    assert 0 < len(lines) <= 20, "failures are logged one line each, within the rate limit"
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in caplog.records)
    texts = " ".join(r.getMessage() for r in lines)
    assert "not a TLS client" in texts or "no complete handshake" in texts


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read until the server closes the connection (or resets it)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass
