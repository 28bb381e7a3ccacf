"""The agent keeps its tunnel: reconnects with backoff, waits for it, says why it failed.

Server and agent in this event loop, real certificates, loopback only. The
agent's backoff is 0.05 s doubling to 0.5 s (the harness), or set per test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from fluidity.agent import Agent
from fluidity.agent.keeper import TunnelState
from fluidity.config.agent import AgentTLS, ReconnectConfig
from fluidity.config.values import Address, FileOrPem
from fluidity.pki.certs import QuickstartPKI, ensure_quickstart_pki
from fluidity.server.server import Server
from fluidity.transport.tls import server_context
from support.harness import LOOPBACK, make_agent_config, make_server_config, start_tunnel
from support.origins import RecordingOrigin
from support.transfers import http_request, wait_for


def unused_port() -> int:
    """A loopback port nothing listens on (a server may bind it later)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def running_agent(
    pki: QuickstartPKI, server_port: int, **changes: object
) -> AsyncIterator[Agent]:
    agent = Agent(make_agent_config(pki, server_port, **changes))
    await agent.start()
    try:
        yield agent
    finally:
        await agent.shutdown(drain_timeout=1.0)


@asynccontextmanager
async def running_server(
    pki: QuickstartPKI, port: int = 0, **changes: object
) -> AsyncIterator[Server]:
    server = Server(make_server_config(pki, listen=Address(LOOPBACK, port), **changes))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(drain_timeout=1.0)


class _Mute(asyncio.Protocol):
    """Accepts and never says a word; keeps its transports for the listener to close."""

    def __init__(self, held: list[asyncio.BaseTransport]) -> None:
        self.held = held

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.held.append(transport)


@asynccontextmanager
async def mute_listener(context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A listener (TLS with ``context``) that accepts and never says a word; its port."""
    held: list[asyncio.BaseTransport] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Mute(held), LOOPBACK, 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for transport in held:
            transport.abort()  # type: ignore[attr-defined]
        await asyncio.wait_for(server.wait_closed(), 5)


def port_of(agent: Agent) -> int:
    assert agent.address is not None
    return agent.address[1]


async def test_each_failed_attempt_is_logged_with_its_reason_and_the_tunnel_comes_up_with_server(
    pki: QuickstartPKI, caplog: pytest.LogCaptureFixture
) -> None:
    port = unused_port()
    caplog.set_level(logging.INFO, logger="fluidity")
    async with running_agent(pki, port) as agent:
        await wait_for(lambda: agent.keeper.reconnects >= 3, within=10)
        attempts = [
            int(m.group(1))
            for r in caplog.records
            if (
                m := re.search(
                    r"cannot connect to .*; reconnecting in [\d.]+ s \(attempt (\d+)\)",
                    r.getMessage(),
                )
            )
        ]
        assert attempts[:3] == [1, 2, 3]
        assert agent.keeper.state is TunnelState.CONNECTING
        async with running_server(pki, port):
            await agent.keeper.wait_ready(within=5)
        assert any("tunnel up" in r.getMessage() for r in caplog.records)


async def test_the_backoff_ceiling_doubles_from_initial_to_max_and_resets_after_a_good_connection(
    pki: QuickstartPKI, caplog: pytest.LogCaptureFixture
) -> None:
    """Each wait is drawn from [0, ceiling]; the ceiling doubles 0.05, 0.1, 0.2 up to 0.2.
    After a connection that ended cleanly the count starts again at attempt 1."""
    caplog.set_level(logging.INFO, logger="fluidity")
    reconnect = ReconnectConfig(initial=0.05, max=0.2)
    port = unused_port()
    async with running_agent(pki, port, reconnect=reconnect) as agent:
        await wait_for(lambda: agent.keeper.reconnects >= 4, within=10)
        assert agent.keeper._backoff.ceiling() == 0.2
        async with running_server(pki, port):
            await agent.keeper.wait_ready(within=5)
        await wait_for(lambda: "connection lost" in caplog.text, within=5)
    after_loss = caplog.text[caplog.text.index("connection lost") :]
    assert re.search(r"connection lost \(.*\); reconnecting in [\d.]+ s \(attempt 1\)", after_loss)


async def test_a_refused_client_certificate_is_an_authentication_failure_naming_it_and_backs_off(
    pki: QuickstartPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS 1.3: the client's handshake completes before the server checks its certificate;
    the refusal is the end of the connection on the first read."""
    stranger = ensure_quickstart_pki(tmp_path / "other-ca")  # a CA the server does not trust
    tls = AgentTLS(
        ca=FileOrPem.from_path(pki.ca_cert),
        cert=FileOrPem.from_path(stranger.client_cert),
        key=FileOrPem.from_path(stranger.client_key),
    )
    async with running_server(pki) as server:
        assert server.address is not None
        async with running_agent(pki, server.address[1], tls=tls, connect_wait=0.5) as agent:
            await wait_for(lambda: agent.keeper.reconnects >= 2, within=10)
            assert agent.keeper.state is TunnelState.AUTH_FAILED
            error = agent.keeper.last_error
            assert "authentication failed" in error and str(stranger.client_cert) in error, error
            logged = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert any(str(stranger.client_cert) in r.getMessage() for r in logged)
            answer = await http_request(port_of(agent), "http://127.0.0.1:9/", "GET")
            assert answer.status == 503 and "authentication failed" in answer.error


async def test_a_request_waits_for_the_tunnel_and_goes_through_once_the_server_is_up(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    port = unused_port()
    async with running_agent(pki, port, connect_wait=10.0) as agent:
        waiting = asyncio.create_task(http_request(port_of(agent), f"{origin.url}/bytes/100"))
        await wait_for(lambda: agent.keeper.reconnects >= 1, within=10)
        assert not waiting.done()
        async with running_server(pki, port):
            outcome = await asyncio.wait_for(waiting, 10)
        assert outcome.intact(100), outcome


async def test_with_no_tunnel_within_connect_wait_a_request_gets_503_with_the_reason(
    pki: QuickstartPKI,
) -> None:
    async with running_agent(pki, unused_port(), connect_wait=0.3) as agent:
        outcome = await asyncio.wait_for(http_request(port_of(agent), "http://127.0.0.1:9/"), 10)
    assert outcome.status == 503
    assert "no tunnel to" in outcome.error and "cannot connect" in outcome.error, outcome


async def test_tcp_keepalive_is_on_at_both_ends_of_the_tunnel(pki: QuickstartPKI) -> None:
    tunnel = await start_tunnel(pki)
    try:
        agent_conn = tunnel.agent.keeper.connection
        (server_conn,) = tunnel.server._connections
        for conn in (agent_conn, server_conn):
            assert conn is not None and conn._transport is not None
            sock = conn._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        await tunnel.close()


async def test_the_server_drops_a_connection_that_does_not_finish_its_tls_handshake_in_time(
    pki: QuickstartPKI,
) -> None:
    """limits.handshake_timeout 0.3 s: a TCP client that never says hello is dropped."""
    limits = dataclasses.replace(make_server_config(pki).limits, handshake_timeout=0.3)
    async with running_server(pki, limits=limits) as server:
        assert server.address is not None
        reader, writer = await asyncio.open_connection(LOOPBACK, server.address[1])
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the server, unprompted
        writer.close()


async def test_the_agent_gives_up_on_a_server_that_never_finishes_the_handshake(
    pki: QuickstartPKI,
) -> None:
    """handshake_timeout 0.3 s against a TCP listener that never answers: a named
    timeout, then the usual backoff."""
    async with mute_listener() as port, running_agent(pki, port, handshake_timeout=0.3) as agent:
        await wait_for(lambda: agent.keeper.reconnects >= 1, within=10)
        assert "timed out after 0.3 s" in agent.keeper.last_error


async def test_the_agent_gives_up_on_a_tls_server_that_never_speaks_http2(
    pki: QuickstartPKI,
) -> None:
    """A TLS server that accepts our certificate but never sends its HTTP/2 preface."""
    config = make_server_config(pki)
    context: ssl.SSLContext = server_context(config.tls.ca, config.tls.cert, config.tls.key)
    async with (
        mute_listener(context) as port,
        running_agent(pki, port, handshake_timeout=0.3) as agent,
    ):
        await wait_for(lambda: agent.keeper.reconnects >= 1, within=10)
        assert "did not speak HTTP/2" in agent.keeper.last_error


async def test_a_server_at_its_tunnel_limit_turns_an_agent_away_and_its_backoff_grows(
    pki: QuickstartPKI,
) -> None:
    """limits.max_tunnels 1: the second agent is told why (GOAWAY ENHANCE_YOUR_CALM)
    and treats it as a failure, so it does not knock in a tight loop."""
    limits = dataclasses.replace(make_server_config(pki).limits, max_tunnels=1)
    async with running_server(pki, limits=limits) as server:
        assert server.address is not None
        port = server.address[1]
        async with running_agent(pki, port) as first, running_agent(pki, port) as second:
            await first.keeper.wait_ready(within=10)
            # last_error is blank for the instant a new attempt is under way: wait for
            # the moment between attempts when it names the server's reason.
            await wait_for(
                lambda: (
                    second.keeper.reconnects >= 3
                    and "limits.max_tunnels (1)" in second.keeper.last_error
                ),
                within=10,
            )
            assert second.keeper._backoff.attempts >= 3
