"""Many connections through one agent, as real processes (uvloop, full mTLS).

* 1,000 client connections at once, each with two keep-alive requests:
  every one answered, no socket error (the agent used to leave such a burst
  in its accept queue for seconds: ``fluidity.agent.listener``).
* 5,000 idle CONNECT tunnels through one agent against a server at its
  default ``limits.max_streams_per_tunnel`` (1,000): none refused (the agent
  opens more tunnels: ``fluidity.agent.pool``), every one carries bytes.

The latencies and the memory of the agent and server are printed as
``FIGURE`` lines (``pytest tests/e2e/test_many_connections.py -rA | grep
FIGURE``), never asserted: speed is the benchmark's business.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import psutil
import pytest

from fluidity.pki.certs import QuickstartPKI
from support.harness import LOOPBACK, Process, agent_yaml, server_yaml, start_process

pytestmark = pytest.mark.slow

WAIT = 30.0  # seconds: the bound on each client's whole exchange
CLIENTS = 1000
IDLE_TUNNELS = 5000
OPENING_AT_ONCE = 200  # idle tunnels being opened at a time
# Sockets this process holds for the idle-tunnel test (each tunnel: a client socket
# and the origin's end), plus room; the agent and server inherit the limit.
FILES_NEEDED = 2 * IDLE_TUNNELS + 1000
RSS_SANITY_MB = 400  # a generous bound: the target (120 MB) is the benchmark's
BODY = b"hello from the many-connections origin\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


OPEN: set[asyncio.Transport] = set()  # the origins' connections, closed at teardown


class Tracked(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        OPEN.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        OPEN.discard(self.transport)


class HttpOrigin(Tracked):
    """Answers every request head with ``RESPONSE`` (no request bodies expected)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        heads = self.buffer.count(b"\r\n\r\n")
        if heads:
            self.transport.write(RESPONSE * heads)
            self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4 :]


class EchoOrigin(Tracked):
    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def raise_file_limit(needed: int) -> None:
    """Raise this process's open-file limit (children inherit it), or skip saying why."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit (ulimit -Hn) is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.fixture
async def origins() -> AsyncIterator[dict[str, int]]:
    loop = asyncio.get_running_loop()
    http = await loop.create_server(HttpOrigin, LOOPBACK, 0, backlog=4096)
    echo = await loop.create_server(EchoOrigin, LOOPBACK, 0, backlog=4096)
    try:
        yield {
            "http": http.sockets[0].getsockname()[1],
            "echo": echo.sockets[0].getsockname()[1],
        }
    finally:
        for server in (http, echo):
            server.close()
        for transport in list(OPEN):
            transport.abort()
        for server in (http, echo):
            await server.wait_closed()


def start_pair(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process], **agent: object
) -> tuple[Process, Process]:
    """A ``fluidity server`` at its default limits and a ``fluidity agent``, as processes."""
    server = start_process("server", server_yaml(pki), tmp_path)
    processes.append(server)
    config = agent_yaml(pki, server.port, max_client_connections=IDLE_TUNNELS + 500, **agent)
    proc = start_process("agent", config, tmp_path)
    processes.append(proc)
    return server, proc


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(len(BODY))
    return head


async def two_requests(agent_port: int, origin_port: int, latencies: list[float]) -> None:
    """Connect, then two keep-alive GETs through the agent; raises on any failure."""
    target = f"{LOOPBACK}:{origin_port}"
    request = f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    async with asyncio.timeout(WAIT):
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(LOOPBACK, agent_port)
        try:
            for _ in range(2):
                writer.write(request)
                head = await read_response(reader)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise AssertionError(head[:200])
                latencies.append(time.monotonic() - started)
                started = time.monotonic()
        finally:
            writer.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@pytest.mark.timeout(120)
async def test_1000_client_connections_at_once_are_all_served_without_socket_errors(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process], origins: dict[str, int]
) -> None:
    raise_file_limit(4 * CLIENTS)
    _, agent = start_pair(pki, tmp_path, processes)
    await wait_tunnel_up(agent)
    latencies: list[float] = []
    outcomes = await asyncio.gather(
        *(two_requests(agent.port, origins["http"], latencies) for _ in range(CLIENTS)),
        return_exceptions=True,
    )
    errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    assert not errors, f"{len(errors)} of {CLIENTS} clients failed, first: {errors[:3]}"
    assert len(latencies) == 2 * CLIENTS
    print(
        f"FIGURE {CLIENTS} connections at once, 2 requests each: p50 "
        f"{percentile(latencies, 0.5) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f}"
        f" ms, max {max(latencies) * 1000:.0f} ms (first request includes the stream's opening)"
    )


async def wait_tunnel_up(agent: Process) -> None:
    """The agent logged its tunnel up (another process: its log is polled)."""
    async with asyncio.timeout(WAIT):
        while "tunnel up" not in agent.log():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def hold_tunnel(
    agent_port: int, echo_port: int, gate: asyncio.Semaphore, held: list[asyncio.StreamWriter]
) -> asyncio.StreamReader:
    """A CONNECT tunnel to the echo origin, checked with a ping; left open."""
    authority = f"{LOOPBACK}:{echo_port}".encode()
    async with gate, asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(LOOPBACK, agent_port, limit=4096)
        held.append(writer)
        writer.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise AssertionError(head[:300].decode(errors="replace"))
        writer.write(b"ping")
        if await reader.readexactly(4) != b"ping":
            raise AssertionError("the echo did not come back")
    return reader


async def agent_status(agent_port: int) -> dict[str, object]:
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(LOOPBACK, agent_port)
        writer.write(b"GET /fluidity/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
    status: dict[str, object] = json.loads(answer.partition(b"\r\n\r\n")[2])
    return status


@pytest.mark.timeout(180)
async def test_5000_idle_tunnels_through_one_agent_none_refused(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process], origins: dict[str, int]
) -> None:
    raise_file_limit(FILES_NEEDED)
    server, agent = start_pair(pki, tmp_path, processes)
    await wait_tunnel_up(agent)
    procs = [psutil.Process(p.popen.pid) for p in (agent, server)]
    before = sum(p.memory_info().rss for p in procs)
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    held: list[asyncio.StreamWriter] = []
    started = time.monotonic()
    try:
        outcomes = await asyncio.gather(
            *(hold_tunnel(agent.port, origins["echo"], gate, held) for _ in range(IDLE_TUNNELS)),
            return_exceptions=True,
        )
        opened = time.monotonic() - started
        refused = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        assert not refused, f"{len(refused)} of {IDLE_TUNNELS} refused, first: {refused[:3]}"
        readers = [o for o in outcomes if isinstance(o, asyncio.StreamReader)]
        # all still open and working: a second ping on the first and the last
        for writer, reader in ((held[0], readers[0]), (held[-1], readers[-1])):
            writer.write(b"pong")
            async with asyncio.timeout(WAIT):
                assert await reader.readexactly(4) == b"pong"
        status = await agent_status(agent.port)
        assert status["tunnels"] == 5  # 5,000 streams at the server's 1,000 per tunnel
        total = sum(p.memory_info().rss for p in procs)
        print(
            f"FIGURE {IDLE_TUNNELS} idle tunnels through one agent ({status['tunnels']} tunnel "
            f"connections): opened in {opened:.1f} s, agent + server RSS {total / 1e6:.0f} MB "
            f"({before / 1e6:.0f} MB before, {(total - before) / IDLE_TUNNELS / 1024:.1f} KiB "
            "per tunnel)"
        )
        assert total < RSS_SANITY_MB * 1e6
    finally:
        for writer in held:
            writer.close()
