"""The WebSocket transport next to the direct transport, side by side.

    python benchmarks/transports.py [--smoke] [--json PATH]

Starts a ``fluidity server`` and two ``fluidity agent`` processes on loopback
(``transport: direct`` and ``transport: websocket``; uvloop where available), a
byte source/sink origin in this process, and measures each transport the same way:

* bulk MB/s through a CONNECT stream, download (origin -> client) and upload,
  and the CPU milliseconds the agent and the server spend per MB moved;
* CONNECT latency: CONNECT sent -> ``200`` received on the established tunnel;
* tunnel setup: a new tunnel connection from nothing to the server's first
  HTTP/2 frame (direct: TCP + TLS 1.3; websocket: TCP + outer TLS + upgrade +
  inner TLS 1.3), made in this process with the agent's own routes.

Measurements alternate between the transports, round by round, so load that
drifts during the run weighs on both alike. It prints medians and the
websocket/direct ratio of each, and writes them as JSON with ``--json``.
``--smoke`` runs tiny sizes (the test suite runs it to keep this script working;
it asserts nothing about speed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from fluidity.agent.path import open_path
from fluidity.agent.routes import DirectRoute, WebSocketRoute
from fluidity.config.values import WebSocketEndpoint
from fluidity.pki.certs import QuickstartPKI, ensure_quickstart_pki
from fluidity.protocol.tunnel import Side
from fluidity.transport.connection import TunnelConnection
from fluidity.transport.tls import agent_context, outer_agent_context

LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024
CHUNK = 256 * 1024
TRANSPORTS = ("direct", "websocket")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Plan:
    bulk_bytes: int
    bulk_repeats: int
    connects: int
    setups: int


FULL = Plan(bulk_bytes=128 * MIB, bulk_repeats=7, connects=500, setups=50)
SMOKE = Plan(bulk_bytes=2 * MIB, bulk_repeats=1, connects=10, setups=5)
# Latency and setup samples are taken in this many alternating rounds.
ROUNDS = 5


@dataclass(frozen=True)
class Figures:
    """One transport's medians."""

    download_mb_s: float
    upload_mb_s: float
    cpu_ms_per_mb: float
    connect_ms: float
    connect_p99_ms: float
    setup_ms: float


# -- the origin: a byte source and sink ---------------------------------------------------


async def _origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """8 bytes big-endian N: N > 0 sends N bytes and closes; N == 0 counts what
    arrives until the client's end of stream, then answers the count (8 bytes)."""
    try:
        (count,) = struct.unpack("!Q", await reader.readexactly(8))
        if count:
            block = os.urandom(CHUNK)
            for offset in range(0, count, CHUNK):
                writer.write(block[: min(CHUNK, count - offset)])
                await writer.drain()
        else:
            received = 0
            while data := await reader.read(CHUNK):
                received += len(data)
            writer.write(struct.pack("!Q", received))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


# -- clients ------------------------------------------------------------------------------


async def open_connect(proxy_port: int, origin_port: int) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter
]:  # fmt: skip
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy_port)
    writer.write(f"CONNECT {LOOPBACK}:{origin_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"CONNECT refused: {head!r}")
    return reader, writer


async def download(proxy_port: int, origin_port: int, size: int) -> float:
    """MB/s of ``size`` bytes from the origin through the agent."""
    reader, writer = await open_connect(proxy_port, origin_port)
    started = time.perf_counter()
    writer.write(struct.pack("!Q", size))
    received = 0
    while data := await reader.read(CHUNK):
        received += len(data)
    elapsed = time.perf_counter() - started
    writer.close()
    if received != size:
        raise RuntimeError(f"downloaded {received} of {size} bytes")
    return size / MIB / elapsed


async def upload(proxy_port: int, origin_port: int, size: int) -> float:
    """MB/s of ``size`` bytes to the origin through the agent (until it counted them)."""
    reader, writer = await open_connect(proxy_port, origin_port)
    block = os.urandom(CHUNK)
    started = time.perf_counter()
    writer.write(struct.pack("!Q", 0))
    for offset in range(0, size, CHUNK):
        writer.write(block[: min(CHUNK, size - offset)])
        await writer.drain()
    writer.write_eof()
    (counted,) = struct.unpack("!Q", await reader.readexactly(8))
    elapsed = time.perf_counter() - started
    writer.close()
    if counted != size:
        raise RuntimeError(f"uploaded {counted} of {size} bytes")
    return size / MIB / elapsed


async def connect_latencies(proxy_port: int, origin_port: int, count: int) -> list[float]:
    """Seconds from CONNECT sent to 200 received, ``count`` times in a row."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        reader, writer = await open_connect(proxy_port, origin_port)
        times.append(time.perf_counter() - started)
        writer.write(struct.pack("!Q", 1))
        await reader.read()
        writer.close()
    return times


async def setup_times(
    pki: QuickstartPKI, server_port: int, transport: str, count: int
) -> list[float]:
    """Seconds to a usable new tunnel connection, made with the agent's own routes."""
    inner = agent_context(pki.ca_cert, pki.client_cert, pki.client_key)
    connector = functools.partial(open_path, None)
    route: DirectRoute | WebSocketRoute
    if transport == "direct":
        route = DirectRoute(LOOPBACK, server_port, "localhost", inner, b"", connector)
    else:
        end = WebSocketEndpoint(True, LOOPBACK, server_port, name="localhost")
        outer = outer_agent_context(pki.ca_cert)
        route = WebSocketRoute(end, "localhost", inner, outer, connector, ping_interval=0)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn = await route.open(lambda: TunnelConnection(Side.AGENT), budget=10)
        await asyncio.wait_for(conn.ready, 10)
        times.append(time.perf_counter() - started)
        conn.close("benchmark")
        await asyncio.wait_for(asyncio.shield(conn.closed), 10)
    return times


# -- processes ----------------------------------------------------------------------------


def start(role: str, config: dict[str, object], workdir: Path, name: str) -> tuple[
    subprocess.Popen[bytes], int
]:  # fmt: skip
    """``fluidity ROLE`` with ``config``; its process and the port it reported."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "fluidity.cli", role, "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    pattern = re.compile(r"(?:listening on|HTTP proxy on) [\d.]+:(\d+)")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = pattern.search(log.read_text(errors="replace"))
        if match:
            return popen, int(match.group(1))
        if popen.poll() is not None:
            break
        time.sleep(0.05)  # another process's log file
    popen.kill()
    raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')}")


@dataclass(frozen=True)
class Fleet:
    """The running processes: the server's port, each agent's proxy port, and for each
    transport the pids whose CPU time its transfers cost (its agent, the server)."""

    server_port: int
    proxies: dict[str, int]
    pids: dict[str, tuple[int, int]]


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc)."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


@contextlib.contextmanager
def fluidity(pki: QuickstartPKI, workdir: Path) -> Iterator[Fleet]:
    """A server and one agent per transport."""
    tls = {"ca": str(pki.ca_cert), "cert": str(pki.server_cert), "key": str(pki.server_key)}
    procs = []
    try:
        server, server_port = start(
            "server",
            {"listen": f"{LOOPBACK}:0", "tls": tls, "targets": {"allow": ["127.0.0.0/8"]}},
            workdir,
            "server",
        )
        procs.append(server)
        ports, pids = {}, {}
        for transport in TRANSPORTS:
            agent_tls = {
                "ca": str(pki.ca_cert),
                "cert": str(pki.client_cert),
                "key": str(pki.client_key),
            }
            config = {
                "listen": f"{LOOPBACK}:0",
                "server": f"{LOOPBACK}:{server_port}",
                "server_name": "localhost",
                "tls": agent_tls,
                "transport": transport,
            }
            agent, ports[transport] = start("agent", config, workdir, f"agent-{transport}")
            procs.append(agent)
            pids[transport] = (agent.pid, server.pid)
        yield Fleet(server_port, ports, pids)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.asynccontextmanager
async def origin() -> AsyncIterator[int]:
    server = await asyncio.start_server(_origin, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


# -- the run ------------------------------------------------------------------------------


async def measure(plan: Plan, pki: QuickstartPKI, workdir: Path) -> dict[str, Figures]:
    """Each measurement in rounds that alternate the transports, so a machine whose
    load drifts during the run weighs on both alike; medians over the rounds.

    Wall-clock MB/s move with the machine's load; the CPU time the agent and server
    processes spend per MB moved (``cpu_ms_per_mb``) hardly does."""
    samples: dict[str, dict[str, list[float]]] = {
        t: {"down": [], "up": [], "cpu": [], "connect": [], "setup": []} for t in TRANSPORTS
    }
    async with origin() as origin_port:
        with fluidity(pki, workdir) as fleet:
            for transport in TRANSPORTS:
                await connect_latencies(fleet.proxies[transport], origin_port, 3)  # warm
            for _ in range(plan.bulk_repeats):
                for transport in TRANSPORTS:
                    got, proxy = samples[transport], fleet.proxies[transport]
                    cpu = cpu_seconds(fleet.pids[transport])
                    got["down"].append(await download(proxy, origin_port, plan.bulk_bytes))
                    got["up"].append(await upload(proxy, origin_port, plan.bulk_bytes))
                    used = cpu_seconds(fleet.pids[transport]) - cpu
                    got["cpu"].append(used * 1000 / (2 * plan.bulk_bytes / MIB))
            for _ in range(ROUNDS):
                for transport in TRANSPORTS:
                    got, proxy = samples[transport], fleet.proxies[transport]
                    count = max(plan.connects // ROUNDS, 1)
                    got["connect"] += await connect_latencies(proxy, origin_port, count)
                    setups = max(plan.setups // ROUNDS, 1)
                    got["setup"] += await setup_times(pki, fleet.server_port, transport, setups)
    return {transport: _figures(got) for transport, got in samples.items()}


def _figures(got: dict[str, list[float]]) -> Figures:
    return Figures(
        download_mb_s=statistics.median(got["down"]),
        upload_mb_s=statistics.median(got["up"]),
        cpu_ms_per_mb=statistics.median(got["cpu"]),
        connect_ms=statistics.median(got["connect"]) * 1000,
        connect_p99_ms=_percentile(got["connect"], 0.99) * 1000,
        setup_ms=statistics.median(got["setup"]) * 1000,
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(results: dict[str, Figures], plan: Plan) -> dict[str, object]:
    direct, websocket = asdict(results["direct"]), asdict(results["websocket"])
    ratios = {key: websocket[key] / direct[key] for key in direct if direct[key]}
    return {
        "plan": asdict(plan),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "direct": direct,
        "websocket": websocket,
        "websocket_over_direct": ratios,
    }


def print_table(summary: dict[str, object]) -> None:
    direct = summary["direct"]
    websocket = summary["websocket"]
    ratios = summary["websocket_over_direct"]
    assert isinstance(direct, dict) and isinstance(websocket, dict) and isinstance(ratios, dict)
    print(f"{'measure':<16}{'direct':>12}{'websocket':>12}{'ws/direct':>12}")
    for key in direct:
        print(f"{key:<16}{direct[key]:>12.2f}{websocket[key]:>12.2f}{ratios.get(key, 0):>12.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check it runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    with tempfile.TemporaryDirectory(prefix="fluidity-bench-") as tmp:
        workdir = Path(tmp)
        pki = ensure_quickstart_pki(workdir / "pki")
        results = asyncio.run(measure(plan, pki, workdir))
    summary = report(results, plan)
    print_table(summary)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
