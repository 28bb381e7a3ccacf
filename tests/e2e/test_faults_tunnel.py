"""A bad network between agent and server: the fault proxy in the tunnel's path.

Server and agent run in this event loop with real certificates; the agent
reaches the server through ``FaultProxy`` (tests/support/faults.py), which adds
latency, limits bandwidth, slices writes into single bytes, resets after N
bytes, or blackholes. Figures (detection and recovery times) are printed with
a ``FIGURE`` prefix: ``pytest tests/e2e/test_faults_tunnel.py -rA | grep FIGURE``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fluidity.agent import Agent
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from support.faults import FaultProxy, Faults
from support.harness import Tunnel, make_agent_config, make_server_config
from support.origins import RecordingOrigin
from support.transfers import connect_request, figure, gated_origin, http_request, wait_for

MIB = 1 << 20
# Event-loop scheduling on a shared CI machine: what a timer may run late by.
SCHEDULING_SLACK = 0.3


@dataclass
class FaultyTunnel:
    """Server and agent in this loop, the fault proxy between them."""

    tunnel: Tunnel
    proxy: FaultProxy

    @property
    def agent(self) -> Agent:
        return self.tunnel.agent

    @property
    def server(self) -> Server:
        return self.tunnel.server

    @property
    def port(self) -> int:
        return self.tunnel.proxy_port


@asynccontextmanager
async def faulty_tunnel(
    pki: QuickstartPKI,
    faults_for: Callable[[int], Faults] = lambda index: Faults(),
    server_changes: dict[str, object] | None = None,
    **agent_changes: object,
) -> AsyncIterator[FaultyTunnel]:
    server = Server(make_server_config(pki, **(server_changes or {})))
    await server.start()
    assert server.address is not None
    proxy = await FaultProxy(server.address[1], faults_for).start()
    agent = Agent(make_agent_config(pki, proxy.port, **agent_changes))
    await agent.start()
    tunnel = Tunnel(server, agent)
    try:
        await tunnel.ready()
        yield FaultyTunnel(tunnel, proxy)
    finally:
        await tunnel.close()
        await proxy.close()


async def test_a_blackholed_tunnel_is_detected_within_0_5_plus_0_5_s_and_recovered(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    """keepalive_interval 0.5 s + keepalive_timeout 0.5 s: dead within 1 s (+ slack); the
    CONNECT stream on it is reset, the unanswered GET is replayed on the new tunnel."""
    keepalive: dict[str, object] = {"keepalive_interval": 0.5, "keepalive_timeout": 0.5}
    async with (
        gated_origin() as gated,
        faulty_tunnel(pki, server_changes=keepalive, **keepalive) as ft,
    ):
        assert (await http_request(ft.port, f"{origin.url}/bytes/1000")).intact(1000)
        path = "/bytes/4096?close&pause=1024"
        cut = asyncio.create_task(connect_request(ft.port, gated.port, path))
        unanswered = asyncio.create_task(http_request(ft.port, f"{gated.url}/held"))
        await gated.wait_until(lambda o: o.paused == 1 and o.held == 1, within=10)
        conn = ft.agent.keeper.connection
        assert conn is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        ft.proxy.blackhole()
        async with asyncio.timeout(10):
            await asyncio.shield(conn.closed)
        detected = loop.time() - started
        await ft.agent.keeper.wait_ready(within=10)
        recovered = loop.time() - started
        figure("blackhole detected (keepalive 0.5 + 0.5 s)", detected)
        figure("blackhole recovered: tunnel up again", recovered)
        assert detected <= 0.5 + 0.5 + SCHEDULING_SLACK
        outcome = await asyncio.wait_for(cut, 10)
        assert outcome.error and not outcome.silently_truncated(4096), outcome
        gated.release()
        replayed = await asyncio.wait_for(unanswered, 10)  # the GET, sent again
        assert (replayed.status, replayed.size, gated.arrivals["/held"]) == (200, 4, 2), replayed
        assert (await http_request(ft.port, f"{origin.url}/bytes/1000")).intact(1000)
        assert ft.proxy.accepted == 2
        # The server saw the same silence and dropped its side too.
        await wait_for(lambda: ft.server.activity().active_connections == 1, within=5)


async def test_a_tunnel_reset_after_2_mib_fails_its_streams_explicitly_then_reconnects(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    """reset_after 2 MiB on the first tunnel connection: an 8 MiB download and a
    close-delimited CONNECT transfer are cut with visible errors; the next tunnel works."""
    first_only = lambda index: Faults(reset_after=2 * MIB) if index == 0 else Faults()  # noqa: E731
    async with gated_origin() as gated, faulty_tunnel(pki, first_only) as ft:
        raw = asyncio.create_task(
            connect_request(ft.port, gated.port, f"/bytes/{8 * MIB}?close&pause={MIB // 2}")
        )
        await gated.wait_until(lambda o: o.paused == 1, within=10)
        framed = await asyncio.wait_for(http_request(ft.port, f"{origin.url}/bytes/{8 * MIB}"), 30)
        cut_raw = await asyncio.wait_for(raw, 10)
        for outcome in (framed, cut_raw):
            assert outcome.error and not outcome.silently_truncated(8 * MIB), outcome
        await ft.agent.keeper.wait_ready(within=10)
        again = await asyncio.wait_for(http_request(ft.port, f"{origin.url}/bytes/{8 * MIB}"), 30)
        assert again.intact(8 * MIB), again
        assert ft.proxy.accepted == 2


async def test_idempotent_requests_are_replayed_once_on_the_next_tunnel_and_a_post_is_not(
    pki: QuickstartPKI,
) -> None:
    """GET and PUT fully sent, unanswered when the tunnel resets: answered via the new
    tunnel. POST: 502 naming the broken stream."""
    async with gated_origin() as gated, faulty_tunnel(pki) as ft:
        url = f"{gated.url}/held"
        requests = [
            asyncio.create_task(http_request(ft.port, url)),
            asyncio.create_task(http_request(ft.port, url, "PUT", b"put body")),
            asyncio.create_task(http_request(ft.port, url, "POST", b"post body")),
        ]
        await gated.wait_until(lambda o: o.held == 3, within=10)
        ft.proxy.reset_all()
        await ft.agent.keeper.wait_ready(within=10)
        gated.release()
        get, put, post = await asyncio.wait_for(asyncio.gather(*requests), 20)
        assert (get.status, get.size, put.status, put.size) == (200, 4, 200, 4), (get, put)
        assert post.status == 502 and "broke" in post.error, post
        assert gated.arrivals["/held"] == 5  # GET and PUT twice, POST once
        assert ft.proxy.accepted == 2


async def test_one_byte_writes_both_ways_carry_a_transfer_intact(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    """Every write of the TLS connection sliced to 1 byte: handshake, HTTP/2 frames and
    a 128 KiB download and 32 KiB upload arrive whole (SHA-256)."""
    async with faulty_tunnel(pki, lambda index: Faults(slice_writes=True)) as ft:
        download = await asyncio.wait_for(http_request(ft.port, f"{origin.url}/bytes/131072"), 60)
        assert download.intact(131072), download
        body = bytes(range(256)) * 128
        upload = await asyncio.wait_for(
            http_request(ft.port, f"{origin.url}/echo", "POST", body), 60
        )
        assert upload.status == 200 and upload.sha256 == hashlib.sha256(body).hexdigest()
        assert ft.proxy.accepted == 1


async def test_latency_50_ms_and_2_mb_per_s_carry_1_mib_intact_without_false_keepalive_deaths(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    """50 ms each way and 2 MB/s: 1 MiB arrives whole (SHA-256), no sooner than the
    bandwidth allows (the fault bit), and PINGs every 0.2 s never declare the slow
    tunnel dead (one tunnel connection throughout)."""
    slow = Faults(latency=0.05, bandwidth=2_000_000)
    keepalive: dict[str, object] = {"keepalive_interval": 0.2, "keepalive_timeout": 0.5}
    async with faulty_tunnel(pki, lambda index: slow, keepalive, **keepalive) as ft:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await asyncio.wait_for(http_request(ft.port, f"{origin.url}/bytes/{MIB}"), 30)
        took = loop.time() - started
        figure("1 MiB at 2 MB/s with 50 ms latency", took)
        assert outcome.intact(MIB), outcome
        assert took >= MIB / 2_000_000  # the bandwidth limit was applied
        assert ft.proxy.accepted == 1


async def test_a_draining_server_sends_new_streams_to_a_new_tunnel_while_old_ones_finish(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    """A rolling restart behind a load balancer (the fault proxy, switched to server B):
    server A drains with an 8 MiB transfer held half-way. A new request is refused by A
    (REFUSED_STREAM), the agent opens a new tunnel at once, lands on B and is answered
    there, while A's transfer finishes intact on the old tunnel."""
    async with gated_origin() as gated, faulty_tunnel(pki) as ft:
        replacement = Server(make_server_config(pki))
        await replacement.start()
        assert replacement.address is not None
        try:
            started = asyncio.Event()
            path = f"/bytes/{8 * MIB}?pause={4 * MIB}"
            held = asyncio.create_task(http_request(ft.port, gated.url + path, started=started))
            await gated.wait_until(lambda o: o.paused == 1, within=10)
            await asyncio.wait_for(started.wait(), 10)
            ft.proxy.target_port = replacement.address[1]  # the balancer's new choice
            draining = asyncio.create_task(ft.server.shutdown(drain_timeout=20))
            await wait_for(lambda: ft.server._draining, within=5)

            fresh = await asyncio.wait_for(http_request(ft.port, f"{origin.url}/bytes/1000"), 10)
            assert fresh.intact(1000), fresh
            assert ft.proxy.accepted == 2
            assert replacement.activity().active_connections == 1

            gated.release()
            assert (await asyncio.wait_for(held, 20)).intact(8 * MIB)
            await asyncio.wait_for(draining, 20)
        finally:
            await replacement.shutdown(drain_timeout=1.0)
