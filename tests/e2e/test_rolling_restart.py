"""A rolling restart behind a real TCP load balancer: nobody notices.

HAProxy (TCP mode, TCP connect health checks: the NLB's stand-in, see
``support.haproxy``) in front of 3 ``fluidity server`` processes; 6 agents in
this event loop reach them only through it, each with continuous traffic (GETs
and CONNECT transfers). Each server in turn is stopped with SIGTERM while
every agent also holds a CONNECT transfer half done, and started again:

- its health check fails first (HAProxy marks it DOWN while the process still
  drains: the listening socket is closed, the open tunnels are not);
- its agents move through the balancer to the other servers at their next
  request (REFUSED_STREAM, new tunnel at once), with no failed request;
- its held transfers finish intact on the old tunnels, then it exits 0.

At the end every agent is connected and the tunnels are spread over the
servers. Figures are printed with a ``FIGURE`` prefix:
``pytest tests/e2e/test_rolling_restart.py -rA | grep FIGURE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fluidity.agent import Agent
from fluidity.pki.certs import QuickstartPKI
from support.haproxy import HAProxy, free_port, haproxy_binary, running_haproxy
from support.harness import LOOPBACK, Process, make_agent_config, server_yaml, start_process
from support.origins import RecordingOrigin
from support.transfers import connect_request, gated_origin, http_request, wait_for

HAPROXY = haproxy_binary()
pytestmark = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed (apt-get install haproxy; scripts/test does it as root)",
)

SERVERS = 3
AGENTS = 6
GET_WORKERS = 2  # per agent, each a GET after the other on a new client connection
TRANSFER = 256 * 1024  # each CONNECT transfer, one worker per agent
HELD = 2 << 20  # the transfer each agent holds half done across each SIGTERM
DRAIN = 10.0  # the servers' drain_timeout: longer than any round holds a transfer
MAX_PER_WORKER = 5000  # bounds each worker's loop (the stop event ends it first)


@dataclass
class Tally:
    """What the clients saw: every request and transfer, and what went wrong."""

    gets: int = 0
    transfers: int = 0
    failures: list[str] = field(default_factory=list)


class ReplayCounter(logging.Handler):
    """Counts the agents' 'retrying the idempotent request' lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying the idempotent request" in record.getMessage():
            self.count += 1


@contextlib.contextmanager
def counting_replays() -> Iterator[ReplayCounter]:
    logger = logging.getLogger("fluidity.agent.client")
    counter, level = ReplayCounter(), logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)


async def get_worker(
    port: int, origin: RecordingOrigin, name: str, tally: Tally, stop: asyncio.Event
) -> None:
    for n in range(MAX_PER_WORKER):
        if stop.is_set():
            return
        outcome = await asyncio.wait_for(http_request(port, f"{origin.url}/hello?{name}-{n}"), 30)
        tally.gets += 1
        if (outcome.status, outcome.size, outcome.error) != (200, 5, ""):
            tally.failures.append(f"GET {name}-{n}: {outcome}")


async def transfer_worker(
    port: int, origin: RecordingOrigin, tally: Tally, stop: asyncio.Event
) -> None:
    for _ in range(MAX_PER_WORKER):
        if stop.is_set():
            return
        outcome = await asyncio.wait_for(
            connect_request(port, origin.port, f"/bytes/{TRANSFER}"), 30
        )
        tally.transfers += 1
        if not outcome.intact(TRANSFER):
            tally.failures.append(f"CONNECT transfer: {outcome}")


def replayed_at_origin(origin: RecordingOrigin) -> int:
    """GETs the origin received more than once (a replay that reached it twice)."""
    seen: dict[bytes, int] = {}
    for head in origin.heads:
        target = head.split(b" ", 2)[1]
        if target.startswith(b"/hello?"):
            seen[target] = seen.get(target, 0) + 1
    return sum(count - 1 for count in seen.values())


@contextlib.asynccontextmanager
async def agents_through(pki: QuickstartPKI, port: int) -> AsyncIterator[list[Agent]]:
    agents = [Agent(make_agent_config(pki, port)) for _ in range(AGENTS)]
    try:
        for agent in agents:
            await agent.start()
        for agent in agents:
            await agent.keeper.wait_ready(within=15)
        yield agents
    finally:
        await asyncio.gather(*(agent.shutdown(drain_timeout=2.0) for agent in agents))


def proxy_port(agent: Agent) -> int:
    assert agent.address is not None
    return agent.address[1]


def moved(agents: list[Agent], before: dict[int, object], since: float) -> list[Agent]:
    """The agents on a tunnel that came up after ``since`` (wall clock), not their old one."""
    return [
        a
        for a in agents
        if a.keeper.connection is not None
        and a.keeper.connection is not before[id(a)]
        and (a.keeper.connected_since or 0) > since
    ]


async def start_server(
    pki: QuickstartPKI, port: int, workdir: Path, processes: list[Process]
) -> Process:
    """A server process on ``port``, added to ``processes`` (killed at the test's end)."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    config = server_yaml(pki, listen=f"{LOOPBACK}:{port}", drain_timeout=DRAIN)
    # start_process polls the log; in a thread, so the agents' traffic goes on meanwhile
    process = await asyncio.to_thread(start_process, "server", config, workdir)
    processes.append(process)
    return process


def figure(name: str, value: float, unit: str = "s") -> None:
    text = f"{value:.3f} s" if unit == "s" else f"{value:g}{unit}"
    print(f"FIGURE rolling restart: {name}: {text}")


async def stop_one(haproxy: HAProxy, name: str, victim: Process, agents: list[Agent]) -> float:
    """SIGTERM ``victim`` while every agent holds a transfer half done, and check the
    order of events. Returns the seconds from the SIGTERM until the last of its
    agents had a new tunnel."""
    loop = asyncio.get_running_loop()
    async with gated_origin() as gate:
        held = [
            asyncio.create_task(
                connect_request(proxy_port(a), gate.port, f"/bytes/{HELD}?pause={HELD // 2}")
            )
            for a in agents
        ]
        await gate.wait_until(lambda o: o.paused == AGENTS, within=30)
        tunnels = (await haproxy.servers())[name].connections
        assert tunnels >= 1, f"{name} carries no tunnel to move: {await haproxy.servers()}"
        before: dict[int, object] = {id(a): a.keeper.connection for a in agents}
        signalled, wall = loop.time(), time.time()
        victim.popen.send_signal(signal.SIGTERM)

        # 1. The health check fails first: the server drains, its process lives on.
        await haproxy.wait_status(name, "DOWN", within=10)
        figure(f"{name} SIGTERM to marked DOWN by the health check", loop.time() - signalled)
        assert victim.popen.poll() is None, "the drain must outlive the held transfers"

        # 2. Its agents move at their next request, through the balancer.
        await wait_for(lambda: len(moved(agents, before, wall)) >= tunnels, within=15)
        move = max((a.keeper.connected_since or wall) - wall for a in moved(agents, before, wall))
        figure(f"{name} SIGTERM to its {tunnels} agents' new tunnels up", move)

        # 3. The held transfers finish intact on the old tunnels; then it exits 0.
        gate.release()
        for outcome in await asyncio.wait_for(asyncio.gather(*held), 30):
            assert outcome.intact(HELD), outcome
        assert await asyncio.to_thread(victim.popen.wait, DRAIN + 10) == 0
        figure(f"{name} SIGTERM to exit (drain)", loop.time() - signalled)
        assert "drained in" in victim.log()
    return move


async def restart_in_turn(
    pki: QuickstartPKI,
    haproxy: HAProxy,
    servers: list[Process],
    ports: list[int],
    agents: list[Agent],
    workdir: Path,
    processes: list[Process],
) -> list[float]:
    """Stop each server in turn (:func:`stop_one`) and start it again on its port."""
    moves: list[float] = []
    for index in range(SERVERS):
        name = f"s{index}"
        moves.append(await stop_one(haproxy, name, servers[index], agents))
        again = workdir / f"{name}-{index + 1}"
        servers[index] = await start_server(pki, ports[index], again, processes)
        await haproxy.wait_status(name, "UP", within=15)
    return moves


async def test_rolling_restart_behind_haproxy_loses_no_request_and_spreads_the_agents(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process], origin: RecordingOrigin
) -> None:
    assert HAPROXY is not None
    ports = [free_port() for _ in range(SERVERS)]
    servers = list(
        await asyncio.gather(
            *(
                start_server(pki, port, tmp_path / f"s{i}-0", processes)
                for i, port in enumerate(ports)
            )
        )
    )
    tally, stop = Tally(), asyncio.Event()
    started = time.monotonic()
    with counting_replays() as replays:
        async with (
            running_haproxy(HAPROXY, ports, tmp_path) as haproxy,
            agents_through(pki, haproxy.port) as agents,
        ):
            workers = [
                asyncio.create_task(get_worker(proxy_port(a), origin, f"a{i}w{w}", tally, stop))
                for i, a in enumerate(agents)
                for w in range(GET_WORKERS)
            ]
            workers += [
                asyncio.create_task(transfer_worker(proxy_port(a), origin, tally, stop))
                for a in agents
            ]
            try:
                await wait_for(lambda: tally.gets >= 50 and tally.transfers >= 6, within=30)
                moves = await restart_in_turn(
                    pki, haproxy, servers, ports, agents, tmp_path, processes
                )
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*workers), 60)

            # Every agent connected; the tunnels spread over more than one server.
            for agent in agents:
                connection = agent.keeper.connection
                assert connection is not None and connection.is_usable
            final = await haproxy.servers()
            counts = sorted(state.connections for state in final.values())
            assert sum(counts) == AGENTS, final
            assert sum(1 for count in counts if count) >= 2, final
            assert all(state.status == "UP" for state in final.values()), final

    figure("requests sent (GETs)", tally.gets, "")
    figure("CONNECT transfers", tally.transfers + AGENTS * SERVERS, "")
    figure("failed (requests and transfers)", len(tally.failures), "")
    figure("replayed (agent log lines)", replays.count, "")
    figure("replayed (GETs the origin saw twice)", replayed_at_origin(origin), "")
    figure("agents moved: slowest SIGTERM to new tunnel", max(moves))
    print(f"FIGURE rolling restart: tunnels per server at the end: {counts}")
    figure("whole test", time.monotonic() - started)
    assert tally.failures == [], tally.failures[:10]
