"""The soak: a thousand CONNECT tunnels churning through real agent and server processes.

``run_soak`` starts ``fluidity server`` and ``fluidity agent`` as processes and
an echo origin here, then keeps ``tunnels`` CONNECT tunnels open at all times
for ``seconds``: each tunnel makes 2 to 8 echo round trips of 1 byte to 16 KiB
(the echo is checked), pausing 0.2 to 2 s between them like a browser
connection, and ends, one time in four by a client reset (RST), otherwise by a clean
half-close; a new tunnel takes its place at once.

Every ``sample_every`` seconds the open file descriptors and resident memory
of both processes are sampled. After the warm-up (the first quarter, at least
5 s) they must stay flat: descriptors never more than ``fd_tolerance`` beyond
the baseline plus one per tunnel (the sockets the open tunnels need), memory
peaks growing by less than ``rss_growth_limit``. At the end every tunnel is closed and both
processes must return to the descriptor count they had before the first
tunnel: anything above is a leak.

Run by ``tests/e2e/test_soak.py`` (30 s in CI, 10 minutes with ``pytest --soak``)
and by ``benchmarks/soak.py --minutes 10``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fluidity.pki.certs import QuickstartPKI
from support.harness import LOOPBACK, Process, agent_yaml, server_yaml, start_process

MIB = 1 << 20


@dataclass(frozen=True)
class Sample:
    """One look at both processes: seconds since the start, fds, RSS bytes, tunnels."""

    at: float
    agent_fds: int
    agent_rss: int
    server_fds: int
    server_rss: int
    open_tunnels: int
    completed: int


@dataclass
class SoakReport:
    """What the soak measured, and whether it stayed flat."""

    seconds: float
    tunnels: int
    warmup: float
    baseline_fds: tuple[int, int]  # agent, server before the first tunnel
    final_fds: tuple[int, int]  # after every tunnel closed
    samples: list[Sample] = field(default_factory=list)
    completed: int = 0
    round_trips: int = 0
    errors: list[str] = field(default_factory=list)

    def steady(self) -> tuple[list[Sample], list[Sample]]:
        """The first and the last quarter of the samples between warm-up and the end of
        the churn (the wind-down, as the last tunnels finish, is left out)."""
        steady = [s for s in self.samples if self.warmup <= s.at <= self.seconds]
        quarter = max(1, len(steady) // 4)
        return steady[:quarter], steady[-quarter:]

    def rss_growth(self) -> tuple[int, int]:
        """How far agent and server RSS peaks rose from the first steady quarter to the
        last (peaks, so a garbage collection caught mid-way does not count)."""
        head, tail = self.steady()
        return (
            max(s.agent_rss for s in tail) - max(s.agent_rss for s in head),
            max(s.server_rss for s in tail) - max(s.server_rss for s in head),
        )

    def fd_excess(self) -> tuple[int, int]:
        """The most descriptors agent and server held after warm-up beyond their baseline
        and one per tunnel: each side needs one socket per open tunnel, so a leak shows
        as an excess that grows; the churn alone keeps it to the few in flight."""
        steady = [s for s in self.samples if self.warmup <= s.at <= self.seconds]
        agent_base, server_base = self.baseline_fds
        return (
            max(s.agent_fds for s in steady) - agent_base - self.tunnels,
            max(s.server_fds for s in steady) - server_base - self.tunnels,
        )

    def summary(self) -> str:
        agent_growth, server_growth = self.rss_growth()
        agent_excess, server_excess = self.fd_excess()
        peak = max(self.samples, key=lambda s: s.open_tunnels)
        return "\n".join(
            [
                f"soak: {self.seconds:.0f} s, {self.tunnels} tunnels open at a time, "
                f"warm-up {self.warmup:.0f} s",
                f"tunnels completed: {self.completed}, echo round trips: {self.round_trips}, "
                f"errors: {len(self.errors)}",
                f"peak open tunnels: {peak.open_tunnels}; fds then: agent {peak.agent_fds}, "
                f"server {peak.server_fds}",
                f"fds before / after: agent {self.baseline_fds[0]} / {self.final_fds[0]}, "
                f"server {self.baseline_fds[1]} / {self.final_fds[1]}",
                f"fds after warm-up, at most, beyond baseline + one per tunnel: "
                f"agent {agent_excess:+d}, server {server_excess:+d}",
                f"RSS peak growth after warm-up: agent {agent_growth / MIB:+.1f} MiB, "
                f"server {server_growth / MIB:+.1f} MiB",
                "RSS (MiB) agent/server over time: "
                + ", ".join(
                    f"{s.at:.0f}s {s.agent_rss / MIB:.0f}/{s.server_rss / MIB:.0f}"
                    for s in self.samples[:: max(1, len(self.samples) // 12)]
                ),
            ]
        )

    def problems(self, fd_tolerance: int, rss_growth_limit: int) -> list[str]:
        """Why the soak is not flat; empty when it is."""
        found = [f"{len(self.errors)} errors, first: {self.errors[0]}"] if self.errors else []
        if self.final_fds != self.baseline_fds:
            found.append(f"fds leaked: before {self.baseline_fds}, after {self.final_fds}")
        if max(self.fd_excess()) > fd_tolerance:
            found.append(f"more fds than one per tunnel after warm-up: {self.fd_excess()}")
        if max(self.rss_growth()) > rss_growth_limit:
            found.append(f"RSS grew after warm-up: {self.rss_growth()} bytes")
        return found


class _Echo:
    """The origin: echoes every byte back, on loopback."""

    def __init__(self) -> None:
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, LOOPBACK, 0, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)


@dataclass
class _Counters:
    open: int = 0
    completed: int = 0
    round_trips: int = 0
    errors: list[str] = field(default_factory=list)


async def _one_tunnel(
    agent_port: int, origin_port: int, rng: random.Random, counters: _Counters
) -> None:
    """One CONNECT tunnel: a few checked echoes with pauses, then a close or a reset."""
    reader, writer = await asyncio.open_connection(LOOPBACK, agent_port)
    counters.open += 1
    try:
        target = f"{LOOPBACK}:{origin_port}"
        async with asyncio.timeout(60):
            writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                counters.errors.append(f"CONNECT answered {head[:60]!r}")
                return
            for _ in range(rng.randint(2, 8)):
                payload = rng.randbytes(rng.randint(1, 16384))
                writer.write(payload)
                if await reader.readexactly(len(payload)) != payload:
                    counters.errors.append("an echo came back different")
                    return
                counters.round_trips += 1
                await asyncio.sleep(rng.uniform(0.2, 2.0))  # pacing: an idle-ish tunnel
            if rng.random() < 0.25:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.write_eof()
                if await reader.read() != b"":
                    counters.errors.append("bytes after the echo's end")
        counters.completed += 1
    except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        counters.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        counters.open -= 1
        writer.close()


async def _slot(
    agent_port: int, origin_port: int, seed: int, until: float, counters: _Counters
) -> None:
    """Keep one tunnel open until ``until``: a new one as soon as one ends."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    while loop.time() < until and len(counters.errors) < 100:
        await _one_tunnel(agent_port, origin_port, rng, counters)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(f"the soak needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _sample_until(
    procs: dict[str, psutil.Process],
    counters: _Counters,
    started: float,
    stop: asyncio.Event,
    every: float,
    on_sample: Callable[[Sample], None],
) -> list[Sample]:
    samples = []
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        agent, server = procs["agent"], procs["server"]
        sample = Sample(
            at=loop.time() - started,
            agent_fds=agent.num_fds(),
            agent_rss=agent.memory_info().rss,
            server_fds=server.num_fds(),
            server_rss=server.memory_info().rss,
            open_tunnels=counters.open,
            completed=counters.completed,
        )
        samples.append(sample)
        on_sample(sample)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    return samples


async def _settled_fds(procs: dict[str, psutil.Process], within: float) -> tuple[int, int]:
    """The processes' fd counts once they stop changing (connections close in callbacks)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    last = (-1, -1)
    while loop.time() < end:
        now = (procs["agent"].num_fds(), procs["server"].num_fds())
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.5)  # polling other processes' descriptor tables
    return last


async def run_soak(
    pki: QuickstartPKI,
    workdir: Path,
    seconds: float,
    tunnels: int = 1000,
    sample_every: float = 1.0,
    on_sample: Callable[[Sample], None] = lambda sample: None,
) -> SoakReport:
    """Run the soak; the processes are stopped (SIGTERM) before it returns."""
    _raise_fd_limit(4 * tunnels + 512)
    limits = {"max_streams_per_tunnel": 2 * tunnels}
    processes: list[Process] = []
    echo = _Echo()
    try:
        processes.append(start_process("server", server_yaml(pki, limits=limits), workdir))
        agent_config = agent_yaml(pki, processes[0].port, max_client_connections=2 * tunnels)
        processes.append(start_process("agent", agent_config, workdir))
        await echo.start()
        server, agent = processes
        procs = {
            "agent": psutil.Process(agent.popen.pid),
            "server": psutil.Process(server.popen.pid),
        }
        await _warm_up_tunnel(agent.port, echo.port)
        baseline = await _settled_fds(procs, within=30)
        report = await _churn(procs, agent.port, echo, seconds, tunnels, sample_every, on_sample)
        report.baseline_fds = baseline
        report.final_fds = await _settled_fds(procs, within=60)
        return report
    finally:
        await echo.close()
        for process in processes:
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in processes:
            try:
                await asyncio.to_thread(process.popen.wait, 30)
            except Exception:
                process.popen.kill()


async def _warm_up_tunnel(agent_port: int, origin_port: int) -> None:
    """One tunnel first: the agent has its tunnel, both sides their lazily made state."""
    counters = _Counters()
    async with asyncio.timeout(30):
        while not counters.completed:
            await _one_tunnel(agent_port, origin_port, random.Random(0), counters)
            if counters.errors:
                await asyncio.sleep(0.1)  # the agent's tunnel may still be coming up
                counters.errors.clear()


async def _churn(
    procs: dict[str, psutil.Process],
    agent_port: int,
    echo: _Echo,
    seconds: float,
    tunnels: int,
    sample_every: float,
    on_sample: Callable[[Sample], None],
) -> SoakReport:
    loop = asyncio.get_running_loop()
    started = loop.time()
    counters = _Counters()
    stop = asyncio.Event()
    sampler = asyncio.create_task(
        _sample_until(procs, counters, started, stop, sample_every, on_sample)
    )
    until = started + seconds
    slots = [
        asyncio.create_task(_slot(agent_port, echo.port, seed, until, counters))
        for seed in range(tunnels)
    ]
    try:
        async with asyncio.timeout(seconds + 120):
            await asyncio.gather(*slots)
    finally:
        for slot in slots:
            slot.cancel()
        await asyncio.gather(*slots, return_exceptions=True)
        stop.set()
        samples = await sampler
    return SoakReport(
        seconds=seconds,
        tunnels=tunnels,
        warmup=max(seconds / 4, 5.0),
        baseline_fds=(0, 0),
        final_fds=(0, 0),
        samples=samples,
        completed=counters.completed,
        round_trips=counters.round_trips,
        errors=counters.errors,
    )
