"""fluidity.agent.pool: more tunnels when one is full, and only while needed.

A real server and agent in this event loop, the server allowing 2 streams per
tunnel (limits.max_streams_per_tunnel, sent as MAX_CONCURRENT_STREAMS), so a
handful of CONNECT tunnels to a real origin fills a tunnel.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from fluidity.pki.certs import QuickstartPKI
from support.harness import LOOPBACK, Tunnel, make_server_config, start_tunnel
from support.origins import RecordingOrigin
from support.transfers import http_request, wait_for

WAIT = 10.0
PER_TUNNEL = 2

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_tunnel(tunnel: Tunnel, origin: RecordingOrigin) -> Client:
    """A CONNECT tunnel through the agent to the origin, checked with one request inside."""
    reader, writer = await asyncio.open_connection(LOOPBACK, tunnel.proxy_port)
    target = f"{LOOPBACK}:{origin.port}"
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    writer.write(f"GET /bytes/5 HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    async with asyncio.timeout(WAIT):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readexactly(5)
    return reader, writer


async def close_all(clients: list[Client]) -> None:
    """Half-close each client and read to the end: its stream then ended both ways."""
    for _, writer in clients:
        writer.write_eof()
    for reader, writer in clients:
        async with asyncio.timeout(WAIT):
            assert await reader.read() == b""
        writer.close()


async def pooled(pki: QuickstartPKI, **agent_changes: object) -> Tunnel:
    limits = dataclasses.replace(make_server_config(pki).limits, max_streams_per_tunnel=PER_TUNNEL)
    return await start_tunnel(pki, server_changes={"limits": limits}, **agent_changes)


@pytest.fixture
async def tunnel(pki: QuickstartPKI) -> AsyncIterator[Tunnel]:
    t = await pooled(pki, max_tunnels=3, extra_tunnel_idle_timeout=0.2)
    try:
        yield t
    finally:
        await t.close()


async def test_streams_beyond_a_full_tunnel_go_on_another(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    clients = [await open_tunnel(tunnel, origin) for _ in range(2 * PER_TUNNEL + 1)]
    assert tunnel.agent.tunnels.tunnels == 3
    assert len(tunnel.server._connections) == 3
    status = tunnel.agent.status()
    assert status["tunnels"] == 3
    await close_all(clients)


async def test_beyond_max_tunnels_full_tunnels_answer_503_naming_both_limits(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    clients = [await open_tunnel(tunnel, origin) for _ in range(3 * PER_TUNNEL)]
    refused = await http_request(tunnel.proxy_port, f"{origin.url}/bytes/10")
    assert refused.status == 503, refused
    assert "max_tunnels" in refused.error and "max_streams_per_tunnel" in refused.error
    await close_all(clients[:1])
    served = await http_request(tunnel.proxy_port, f"{origin.url}/bytes/10")
    assert served.intact(10), served  # a stream ended: there is room again
    await close_all(clients[1:])


async def test_a_burst_shares_one_dial_per_extra_tunnel(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    """Five at once against two-stream tunnels: three tunnels, not one dial per stream."""
    clients = await asyncio.gather(*(open_tunnel(tunnel, origin) for _ in range(5)))
    assert tunnel.agent.tunnels.extras_opened == 2
    assert len(tunnel.server._connections) == 3
    await close_all(list(clients))


async def test_idle_extra_tunnels_close_and_the_keepers_stays(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    clients = [await open_tunnel(tunnel, origin) for _ in range(PER_TUNNEL + 1)]
    assert tunnel.agent.tunnels.tunnels == 2
    await close_all(clients)
    # extra_tunnel_idle_timeout 0.2 s: gone within 1.25 times that, checked every 0.05 s
    await wait_for(lambda: len(tunnel.server._connections) == 1, WAIT)
    assert tunnel.agent.tunnels.tunnels == 1
    assert tunnel.agent.keeper.connection is not None
    assert tunnel.agent.keeper.connection.is_usable
    outcome = await http_request(tunnel.proxy_port, f"{origin.url}/bytes/10")
    assert outcome.intact(10), outcome


async def test_bytes_over_extra_tunnels_count_in_the_totals(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    clients = [await open_tunnel(tunnel, origin) for _ in range(PER_TUNNEL + 1)]
    before = tunnel.agent.tunnels.bytes_in
    assert before > tunnel.agent.keeper.bytes_in  # the extra tunnel's share is in
    await close_all(clients)
    await wait_for(lambda: tunnel.agent.tunnels.tunnels == 1, WAIT)
    assert tunnel.agent.tunnels.bytes_in >= before  # and stays once it closed


async def test_an_agent_stopping_closes_its_extra_tunnels(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    tunnel = await pooled(pki, max_tunnels=2)
    try:
        clients = [await open_tunnel(tunnel, origin) for _ in range(PER_TUNNEL + 1)]
        assert len(tunnel.server._connections) == 2
        await tunnel.agent.shutdown(drain_timeout=0.1)
        await wait_for(lambda: not tunnel.server._connections, WAIT)
        for _, writer in clients:
            writer.close()
    finally:
        await tunnel.server.shutdown(drain_timeout=1.0)


async def test_an_extra_tunnel_the_server_turns_away_is_not_dialled_again_at_once(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    """The server takes one tunnel (limits.max_tunnels 1): the agent's extra tunnel is
    refused, the stream gets 503 saying so, and the next streams get the same answer
    without another dial (for GROW_RETRY seconds)."""
    limits = dataclasses.replace(
        make_server_config(pki).limits, max_streams_per_tunnel=PER_TUNNEL, max_tunnels=1
    )
    tunnel = await start_tunnel(pki, server_changes={"limits": limits}, max_tunnels=3)
    keeper = tunnel.agent.keeper
    dials: list[object] = []
    dial_extra = keeper.dial_extra

    async def counted() -> object:
        dials.append(None)
        return await dial_extra()

    keeper.dial_extra = counted  # type: ignore[method-assign,assignment]
    try:
        clients = [await open_tunnel(tunnel, origin) for _ in range(PER_TUNNEL)]
        for _ in range(3):
            refused = await http_request(tunnel.proxy_port, f"{origin.url}/bytes/10")
            assert refused.status == 503, refused
            assert "another could not be opened" in refused.error, refused.error
        assert len(dials) == 1
        assert tunnel.agent.tunnels.tunnels == 1
        await close_all(clients)
    finally:
        await tunnel.close()


async def test_a_lost_extra_tunnel_is_dropped_and_another_dialled_when_needed(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    clients = [await open_tunnel(tunnel, origin) for _ in range(PER_TUNNEL + 1)]
    pool = tunnel.agent.tunnels
    lost = pool._extras[0]
    lost.close_now("the test cuts it")
    await wait_for(lambda: lost.closed.done(), WAIT)
    assert pool.tunnels == 1
    with pytest.raises(ConnectionResetError):  # its client is told: reset, not a clean end
        async with asyncio.timeout(WAIT):
            await clients[-1][0].read()
    clients[-1][1].close()
    replacement = await open_tunnel(tunnel, origin)
    assert pool.tunnels == 2 and pool.extras_opened == 2
    await close_all([*clients[:PER_TUNNEL], replacement])
