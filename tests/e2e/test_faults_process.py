"""Kill and stop real ``fluidity`` processes mid-transfer.

The process under test runs as a real ``fluidity`` subprocess (uvloop, real
signal handling); the other end runs in this event loop so its state can be
read. Origins hold their answers at a gate, so every transfer is provably in
flight when the signal lands. Figures (reconnect, drain) are printed with a
``FIGURE`` prefix: ``pytest tests/e2e/test_faults_process.py -rA | grep FIGURE``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest

from fluidity.agent import Agent
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from support.harness import (
    LOOPBACK,
    Process,
    agent_yaml,
    make_agent_config,
    make_server_config,
    server_yaml,
    start_process,
)
from support.origins import GatedOrigin, RecordingOrigin
from support.transfers import (
    Outcome,
    assert_intact_or_explicit,
    connect_request,
    figure,
    gated_origin,
    http_request,
    wait_for_log,
)

MIB = 1 << 20
SIZE = 8 * MIB
HALF = SIZE // 2


@asynccontextmanager
async def agent_for(
    pki: QuickstartPKI, server_port: int, **changes: object
) -> AsyncIterator[Agent]:
    """An agent in this loop (reconnect backoff 0.05 s doubling to 0.5 s)."""
    agent = Agent(make_agent_config(pki, server_port, **changes))
    await agent.start()
    try:
        await agent.keeper.wait_ready(within=10)
        yield agent
    finally:
        await agent.shutdown(drain_timeout=1.0)


def proxy_port(agent: Agent) -> int:
    assert agent.address is not None
    return agent.address[1]


async def exit_code(process: Process, within: float) -> int:
    return await asyncio.to_thread(process.popen.wait, within)


async def start_transfers(
    port: int, origin: GatedOrigin, count: int
) -> list[asyncio.Task[Outcome]]:
    """``count`` 8 MiB downloads through the agent at ``port``: framed (Content-Length),
    close-delimited, and raw CONNECT in turn. Returns once each is held at the origin
    after 4 MiB and its client has body bytes: every one is under way."""
    paths = [f"/bytes/{SIZE}?pause={HALF}", f"/bytes/{SIZE}?close&pause={HALF}"]
    tasks = []
    started = [asyncio.Event() for _ in range(count)]
    for i in range(count):
        if i % 3 == 2:
            work = connect_request(port, origin.port, paths[1], started[i])
        else:
            work = http_request(port, f"{origin.url}{paths[i % 3]}", started=started[i])
        tasks.append(asyncio.create_task(work))
    await origin.wait_until(lambda o: o.paused == count, within=30)
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 30)
    return tasks


async def test_server_sigkill_during_ten_8_mib_transfers_loses_nothing_silently_and_the_agent_is_back_within_2_s(  # noqa: E501
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process], origin: RecordingOrigin
) -> None:
    """SIGKILL the server while 10 transfers of 8 MiB are half done (plus an unanswered
    GET and POST); restart it on the same port. Every transfer is whole or an explicit
    error (zero silent truncations), the GET is replayed, the POST is a 502, the
    agent is back within 2 s of the restart, and 10 more 8 MiB transfers are intact."""
    server = start_process("server", server_yaml(pki), tmp_path)
    processes.append(server)
    async with gated_origin() as gated, agent_for(pki, server.port) as agent:
        port = proxy_port(agent)
        get = asyncio.create_task(http_request(port, f"{gated.url}/held"))
        post = asyncio.create_task(http_request(port, f"{gated.url}/held", "POST", b"once"))
        transfers = await start_transfers(port, gated, 10)
        await gated.wait_until(lambda o: o.held == 2, within=30)

        loop = asyncio.get_running_loop()
        server.popen.send_signal(signal.SIGKILL)
        killed = loop.time()
        assert await exit_code(server, 10) == -signal.SIGKILL
        gated.release()
        restart_dir = tmp_path / "restart"
        restart_dir.mkdir()
        listen = f"{LOOPBACK}:{server.port}"  # the port the first server had
        spawned = loop.time()
        restarted = start_process("server", server_yaml(pki, listen=listen), restart_dir)
        processes.append(restarted)
        listening = loop.time()
        await agent.keeper.wait_ready(within=2.0)
        back = loop.time()
        figure("agent back up after the restarted server's listening line", back - listening)
        figure("agent back up after the server process was spawned again", back - spawned)
        figure("outage: SIGKILL to tunnel up again, restart included", back - killed)

        outcomes = await asyncio.wait_for(asyncio.gather(*transfers), 30)
        for outcome in outcomes:
            assert_intact_or_explicit(outcome, SIZE)
        assert sum(bool(o.error) for o in outcomes) == 10  # all were cut mid-way
        replayed, refused = await asyncio.wait_for(asyncio.gather(get, post), 20)
        assert (replayed.status, replayed.size) == (200, 4), replayed
        assert refused.status == 502, refused
        assert gated.arrivals["/held"] == 3  # GET twice, POST once

        again = [http_request(port, f"{origin.url}/bytes/{SIZE}") for _ in range(10)]
        for outcome in await asyncio.wait_for(asyncio.gather(*again), 60):
            assert outcome.intact(SIZE), outcome


async def test_server_sigterm_during_five_8_mib_transfers_completes_them_refuses_new_work_and_exits_0(  # noqa: E501
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process]
) -> None:
    """SIGTERM while 5 transfers of 8 MiB are half done: the listener closes at once
    (new TCP connections refused), a new request through the agent is refused by the
    draining tunnel (503) without reaching any target, all 5 finish intact, exit 0."""
    server = start_process("server", server_yaml(pki, drain_timeout=20), tmp_path)
    processes.append(server)
    async with gated_origin() as gated, agent_for(pki, server.port, connect_wait=1.0) as agent:
        port = proxy_port(agent)
        transfers = await start_transfers(port, gated, 5)

        loop = asyncio.get_running_loop()
        signalled = loop.time()
        server.popen.send_signal(signal.SIGTERM)
        await wait_for_log(server, r"draining: 5 streams open", within=10)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(asyncio.open_connection(LOOPBACK, server.port), 5)
        late = await http_request(port, f"{gated.url}/held")
        assert late.status == 503 and "draining" in late.error, late
        assert "/held" not in gated.arrivals

        released = loop.time()
        gated.release()
        for outcome in await asyncio.wait_for(asyncio.gather(*transfers), 30):
            assert outcome.intact(SIZE), outcome
        finished = loop.time()
        assert await exit_code(server, 20) == 0
        exited = loop.time()
        figure("server drain: last stream done to exit", exited - finished)
        figure("server drain: SIGTERM to exit (transfers held 4 MiB in)", exited - signalled)
        figure("server drain: gate opened to exit", exited - released)
        assert "drained in" in server.log()


async def test_agent_sigterm_during_three_transfers_completes_them_refuses_new_clients_and_exits_0(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process]
) -> None:
    """The agent as a process: SIGTERM while 3 transfers are half done. Its listener
    closes (new clients refused), the 3 finish intact, it exits 0."""
    server = Server(make_server_config(pki))
    await server.start()
    assert server.address is not None
    agent = start_process("agent", agent_yaml(pki, server.address[1]), tmp_path)
    processes.append(agent)
    try:
        async with gated_origin() as gated:
            await wait_for_log(agent, r"tunnel up", within=10)
            transfers = await start_transfers(agent.port, gated, 3)
            agent.popen.send_signal(signal.SIGTERM)
            await wait_for_log(agent, r"draining 3 client connections", within=10)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(asyncio.open_connection(LOOPBACK, agent.port), 5)
            gated.release()
            for outcome in await asyncio.wait_for(asyncio.gather(*transfers), 30):
                assert outcome.intact(SIZE), outcome
            assert await exit_code(agent, 20) == 0
    finally:
        await server.shutdown(drain_timeout=1.0)


async def test_a_second_signal_during_the_drain_exits_at_once(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process]
) -> None:
    """SIGTERM starts a drain held open by a paused transfer; SIGINT then ends the
    server at once (exit status 1) and the transfer ends with an explicit error."""
    server = start_process("server", server_yaml(pki, drain_timeout=60), tmp_path)
    processes.append(server)
    async with gated_origin() as gated, agent_for(pki, server.port) as agent:
        transfers = await start_transfers(proxy_port(agent), gated, 1)
        server.popen.send_signal(signal.SIGTERM)
        await wait_for_log(server, r"draining: 1 streams open", within=10)
        server.popen.send_signal(signal.SIGINT)
        assert await exit_code(server, 10) == 1
        assert "again: exiting at once" in server.log()
        gated.release()
        (outcome,) = await asyncio.wait_for(asyncio.gather(*transfers), 30)
        assert outcome.error and not outcome.silently_truncated(SIZE), outcome


def namespace_pid(pid: int) -> int:
    """The PID the process has inside its own PID namespace (the last of NSpid)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("NSpid:"))
    return int(line.split()[-1])


def _pid_namespaces_work() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "true"], capture_output=True, timeout=10, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _pid_namespaces_work(), reason="needs root and unshare --pid")
async def test_as_pid_1_in_its_own_pid_namespace_sigterm_drains_and_exits_0(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process]
) -> None:
    """As in a container without an init: the server is PID 1, where signals without a
    handler are ignored. SIGTERM still drains an open transfer and exits 0."""
    prefix = ["unshare", "--pid", "--fork", "--kill-child"]
    server = start_process("server", server_yaml(pki), tmp_path, prefix=prefix)
    processes.append(server)
    (child,) = psutil.Process(server.popen.pid).children()
    assert namespace_pid(child.pid) == 1
    async with gated_origin() as gated, agent_for(pki, server.port) as agent:
        transfers = await start_transfers(proxy_port(agent), gated, 1)
        os.kill(child.pid, signal.SIGTERM)
        await wait_for_log(server, r"draining: 1 streams open", within=10)
        gated.release()
        (outcome,) = await asyncio.wait_for(asyncio.gather(*transfers), 30)
        assert outcome.intact(SIZE), outcome
        assert await exit_code(server, 20) == 0  # unshare passes on PID 1's status
