"""``rebalance:``: a server above its tunnel count asks a few agents to move.

First in one event loop (which tunnel is chosen, that its streams finish and
that the agent carries on), then behind HAProxy as after a scale-out: 4 agents
on the only server, a second server starts, and the first sheds 2 of them to
it through the balancer while continuous GETs see no failure.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from fluidity.agent import Agent
from fluidity.config.rebalance import RebalanceConfig
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.rebalance import TunnelLoad, choose
from support.haproxy import free_port, haproxy_binary, running_haproxy
from support.harness import (
    LOOPBACK,
    Process,
    make_agent_config,
    server_yaml,
    start_process,
    start_tunnel,
)
from support.origins import RecordingOrigin
from support.transfers import connect_request, gated_origin, http_request, wait_for

HAPROXY = haproxy_binary()


@pytest.mark.parametrize(
    ("loads", "above", "batch", "expected"),
    [
        ([], 1, 5, []),
        ([(0, 0), (0, 0)], 2, 5, []),
        ([(3, 10), (0, 500), (0, 20), (1, 0)], 2, 5, [2, 1]),  # quietest first
        ([(0, 3), (0, 2), (0, 1), (0, 0)], 1, 2, [3, 2]),  # at most batch
        ([(5, 0), (4, 0)], 1, 5, [1]),  # only the excess, even if all are busy
    ],
)
def test_choose_moves_the_quietest_of_the_excess(
    loads: list[tuple[int, int]], above: int, batch: int, expected: list[int]
) -> None:
    assert choose([TunnelLoad(s, b) for s, b in loads], above, batch) == expected


async def test_a_moved_tunnel_finishes_its_streams_and_the_agent_carries_on(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    """One server, two agents, ``above: 1``: the idle agent is chosen, not the one
    with a transfer held half done. Then the other one is the quieter (the first now
    holds two transfers): it moves, its transfer finishes intact on the old tunnel,
    which closes after it, and its next request goes through on the new one."""
    rebalance = RebalanceConfig(enabled=True, above=1, interval=3600)
    busy = await start_tunnel(pki, server_changes={"rebalance": rebalance})
    server = busy.server
    assert server.address is not None and server.rebalancer is not None
    other = Agent(make_agent_config(pki, server.address[1]))
    await other.start()
    path = "/bytes/1048576?pause=524288"
    try:
        await other.keeper.wait_ready(within=10)
        async with gated_origin() as gate:
            held = [asyncio.create_task(connect_request(busy.proxy_port, gate.port, path))]
            await gate.wait_until(lambda o: o.paused == 1, within=10)
            first = other.keeper.connection
            assert server.rebalancer.check() == 1  # the quiet one
            await wait_for(lambda: other.keeper.connection not in (None, first), within=10)
            before = busy.agent.keeper.connection
            assert before is not None and before.is_usable

            assert other.address is not None
            held += [
                asyncio.create_task(connect_request(other.address[1], gate.port, path))
                for _ in range(2)
            ]
            await gate.wait_until(lambda o: o.paused == 3, within=10)
            assert server.rebalancer.check() == 1  # now the busy agent is the quieter
            answer = await asyncio.wait_for(
                http_request(busy.proxy_port, f"{origin.url}/after"), 10
            )
            assert (answer.status, answer.error) == (200, ""), answer
            assert busy.agent.keeper.connection is not before
            assert not before.closed.done()  # still carrying its held transfer
            gate.release()
            for outcome in await asyncio.wait_for(asyncio.gather(*held), 10):
                assert outcome.intact(1 << 20), outcome
            await asyncio.wait_for(before.closed, 10)  # closed once its stream was done
        assert server.rebalancer.moved == 2
    finally:
        await other.shutdown(drain_timeout=1)
        await busy.close()


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")
async def test_after_a_scale_out_the_busy_server_sheds_agents_to_the_new_one(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process], origin: RecordingOrigin
) -> None:
    assert HAPROXY is not None
    ports = [free_port(), free_port()]
    rebalance = {"enabled": True, "above": 2, "interval": 0.2}

    def config(port: int) -> dict[str, object]:
        return server_yaml(pki, listen=f"{LOOPBACK}:{port}", rebalance=rebalance)

    (tmp_path / "s0").mkdir()
    processes.append(start_process("server", config(ports[0]), tmp_path / "s0"))
    async with running_haproxy(HAPROXY, ports, tmp_path, up=False) as haproxy:
        await haproxy.wait_status("s0", "UP", within=10)
        agents = [Agent(make_agent_config(pki, haproxy.port)) for _ in range(4)]
        failures: list[str] = []
        stop = asyncio.Event()

        async def traffic(agent: Agent, name: str) -> None:
            assert agent.address is not None
            for n in range(5000):  # bounded; the stop event ends it first
                if stop.is_set():
                    return
                url = f"{origin.url}/{name}-{n}"
                outcome = await asyncio.wait_for(http_request(agent.address[1], url), 30)
                if (outcome.status, outcome.error) != (200, ""):
                    failures.append(f"{url}: {outcome}")

        try:
            for agent in agents:
                await agent.start()
                await agent.keeper.wait_ready(within=10)
            assert (await haproxy.servers())["s0"].connections == 4  # the only server
            workers = [asyncio.create_task(traffic(a, f"a{i}")) for i, a in enumerate(agents)]

            (tmp_path / "s1").mkdir()
            new = await asyncio.to_thread(
                start_process, "server", config(ports[1]), tmp_path / "s1"
            )
            processes.append(new)
            await haproxy.wait_status("s1", "UP", within=10)

            async def spread() -> list[int]:
                return sorted(s.connections for s in (await haproxy.servers()).values())

            async with asyncio.timeout(20):
                while await spread() != [2, 2]:  # noqa: ASYNC110 (HAProxy has no push)
                    await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), 30)
            assert all(a.keeper.connection is not None for a in agents)
            assert failures == [], failures[:5]
            assert "rebalancing: 4 tunnels here, above 2" in processes[0].log()
        finally:
            stop.set()
            await asyncio.gather(*(a.shutdown(drain_timeout=1) for a in agents))
            for process in processes:
                process.popen.send_signal(signal.SIGTERM)
