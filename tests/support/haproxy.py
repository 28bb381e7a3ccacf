"""HAProxy in TCP mode on loopback: the stand-in for the network load balancer.

Like an NLB it forwards TCP unchanged (TLS stays end to end between agent and
server) and checks each server with a plain TCP connect to the tunnel port.
Unlike an NLB it balances by least connections, retries a refused connect on
another server (``option redispatch``) and checks every 100 ms, so a test sees
in a fraction of a second what takes an NLB 20 s.

HAProxy cannot bind port 0 and report the port it got, so :func:`free_port`
finds one by binding port 0 and closing it; the window for another process to
take it in between is a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


def haproxy_binary() -> str | None:
    """The haproxy program (Debian installs it in /usr/sbin), or None."""
    found = shutil.which("haproxy")
    if found is None and Path("/usr/sbin/haproxy").exists():
        found = "/usr/sbin/haproxy"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def config_text(port: int, servers: Sequence[int], stats: Path) -> str:
    """A TCP frontend on ``port`` over ``servers`` (ports on 127.0.0.1)."""
    lines = [
        "global",
        "    maxconn 2000",
        f"    stats socket {stats} mode 600 level admin",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        # above the agents' keepalive (a PING every 15 s): idle tunnels stay up
        "    timeout client 2m",
        "    timeout server 2m",
        # a connect refused by a draining server is retried on another one
        "    retries 3",
        "    option redispatch 1",
        "frontend tunnel",
        f"    bind {LOOPBACK}:{port}",
        "    default_backend servers",
        "backend servers",
        "    balance leastconn",
        "    default-server check inter 100ms fall 1 rise 1",
        *(f"    server s{i} {LOOPBACK}:{p}" for i, p in enumerate(servers)),
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ServerState:
    status: str  # UP, DOWN, ...
    connections: int  # current sessions through HAProxy: the tunnels on that server


@dataclass
class HAProxy:
    process: asyncio.subprocess.Process
    port: int
    stats_path: Path
    log_path: Path

    async def servers(self) -> dict[str, ServerState]:
        """``show stat`` over the stats socket: each backend server's status and sessions."""
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_unix_connection(str(self.stats_path))
            try:
                writer.write(b"show stat\n")
                text = (await reader.read()).decode()
            finally:
                writer.close()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: ServerState(row["status"].split()[0], int(row["scur"] or 0))
            for row in rows
            if row["pxname"] == "servers" and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    async def wait_status(self, server: str, status: str, within: float) -> None:
        """Poll the stats until ``server`` reads ``status`` (HAProxy has no push)."""
        try:
            async with asyncio.timeout(within):
                while (await self.servers())[server].status != status:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(
                f"haproxy did not see {server} {status} within {within} s: "
                f"{await self.servers()}\n{self.log_path.read_text(errors='replace')}"
            ) from None


@contextlib.asynccontextmanager
async def running_haproxy(
    binary: str, servers: Sequence[int], workdir: Path, *, up: bool = True
) -> AsyncIterator[HAProxy]:
    """HAProxy in the foreground in front of ``servers``; with ``up``, wait until it
    sees every one of them UP. Stopped (and waited for) on exit."""
    stats = workdir / "haproxy.sock"
    config = workdir / "haproxy.cfg"
    port = free_port()
    config.write_text(config_text(port, servers, stats))
    log_path = workdir / "haproxy.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary, "-db", "-f", str(config), stdout=log, stderr=subprocess.STDOUT
        )
    proxy = HAProxy(process, port, stats, log_path)
    try:
        async with asyncio.timeout(10):
            while not stats.exists():
                if process.returncode is not None:
                    raise AssertionError(f"haproxy exited:\n{log_path.read_text()}")
                await asyncio.sleep(0.02)
        if up:
            for index in range(len(servers)):
                await proxy.wait_status(f"s{index}", "UP", within=10)
        yield proxy
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)
