"""Stopping leaves no socket behind: the TLS close round trip is awaited, and a peer that
never answers it is aborted.

Closing a TLS connection is a round trip (close_notify each way), so a program that
returned right after ``transport.close()`` left its socket open until the peer's
close_notify arrived, or for good once its loop was gone: the GC later reported it
as an unclosed socket (a flaky ResourceWarning in the corporate-proxy tests, where
squid carries that round trip). The agent and the server now wait for it, bounded.

The agent reaches the server through ``Relay``, a loopback TCP relay that can stall:
once stalled it reads and drops everything, the way a dead peer or a hung proxy
would, so no close_notify ever arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from fluidity.agent import Agent
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from fluidity.transport.connection import CLOSE_GRACE, TunnelConnection
from support.harness import LOOPBACK, make_agent_config, make_server_config

WAIT = 10.0  # seconds: the bound on every wait in this file


class Relay:
    """Forwards each connection to ``target`` byte for byte until ``stall()``."""

    def __init__(self, target: int) -> None:
        self._target = target
        self.stalled = False
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stall(self) -> None:
        """From now on, drop whatever either side sends."""
        self.stalled = True

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.transport.abort()
        async with asyncio.timeout(WAIT):
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        async with asyncio.timeout(WAIT):
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self._target)
        self._writers.append(up_writer)
        loop = asyncio.get_running_loop()
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = loop.create_task(self._pump(source, sink))
            self._pumps.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if not self.stalled:
                    sink.write(data)


@dataclass
class Relayed:
    server: Server
    agent: Agent
    relay: Relay

    @property
    def agent_connection(self) -> TunnelConnection:
        conn = self.agent.keeper.connection
        assert conn is not None
        return conn


@pytest.fixture
async def relayed(pki: QuickstartPKI) -> AsyncIterator[Relayed]:
    server = Server(make_server_config(pki))
    await server.start()
    assert server.address is not None
    relay = Relay(server.address[1])
    await relay.start()
    agent = Agent(make_agent_config(pki, relay.port))
    await agent.start()
    try:
        await agent.keeper.wait_ready(within=WAIT)
        yield Relayed(server, agent, relay)
    finally:
        async with asyncio.timeout(WAIT):
            await agent.shutdown(drain_timeout=0.5)
            await server.shutdown(drain_timeout=0.5)
            await relay.close()


async def test_the_agent_returns_from_shutdown_with_its_tunnel_socket_closed(
    relayed: Relayed,
) -> None:
    conn = relayed.agent_connection
    async with asyncio.timeout(WAIT):
        await relayed.agent.shutdown(drain_timeout=0.5)
    assert conn.closed.done(), "the agent returned with its tunnel socket still open"


async def test_the_server_returns_from_shutdown_with_every_tunnel_socket_closed(
    relayed: Relayed,
) -> None:
    assert relayed.server.activity().active_connections == 1
    async with asyncio.timeout(WAIT):
        await relayed.server.shutdown(drain_timeout=0.5)
    # A connection leaves the server's books in connection_lost, once its socket is closed.
    assert relayed.server.activity().active_connections == 0


async def test_a_peer_that_never_answers_the_close_is_aborted_after_the_grace(
    relayed: Relayed,
) -> None:
    conn = relayed.agent_connection
    relayed.relay.stall()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(WAIT):
        await relayed.agent.shutdown(drain_timeout=0.5)
        assert conn.closed.done(), "the agent returned with its tunnel socket still open"
        assert loop.time() - started >= CLOSE_GRACE  # it did wait for the peer first
        await relayed.server.shutdown(drain_timeout=0.5)
    assert relayed.server.activity().active_connections == 0


async def test_an_abort_still_works_after_the_transport_was_closed_twice(
    relayed: Relayed,
) -> None:
    # asyncio's TLS transport drops its protocol on a second close(), after which
    # abort() is a no-op: the connection must close its transport only once.
    conn = relayed.agent_connection
    relayed.relay.stall()
    conn.close("first")
    conn.close("second")
    async with asyncio.timeout(WAIT):
        await conn.finish("third", grace=0.1)
    assert conn.closed.done()
