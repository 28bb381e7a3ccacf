"""1 GiB each way through agent and server processes, checked by SHA-256, memory flat.

The agent and server run as real ``fluidity`` processes so their resident
memory can be sampled on its own while curl streams through them.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from fluidity.pki.certs import QuickstartPKI
from support.harness import Process, agent_yaml, server_yaml, start_process
from support.origins import CHUNK, RecordingOrigin, pattern, pattern_sha256

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

GIB = 1 << 30
RSS_LIMIT = 100 * 1024 * 1024


@dataclass
class RssSampler:
    """Samples the resident memory of processes until stopped; keeps the peak of each."""

    pids: dict[str, int]
    peaks: dict[str, int] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        procs = {name: psutil.Process(pid) for name, pid in self.pids.items()}
        while not stop.is_set():
            for name, proc in procs.items():
                self.peaks[name] = max(self.peaks.get(name, 0), proc.memory_info().rss)
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass


@pytest.fixture
async def pair(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process]
) -> AsyncIterator[tuple[Process, Process]]:
    server = start_process("server", server_yaml(pki), tmp_path)
    processes.append(server)
    agent = start_process("agent", agent_yaml(pki, server.port), tmp_path)
    processes.append(agent)
    yield server, agent


async def sampled(
    pair: tuple[Process, Process], work: asyncio.Future[str]
) -> tuple[str, dict[str, int]]:
    server, agent = pair
    sampler = RssSampler({"server": server.popen.pid, "agent": agent.popen.pid})
    stop = asyncio.Event()
    task = asyncio.create_task(sampler.run(stop))
    try:
        result = await work
    finally:
        stop.set()
        await task
    return result, sampler.peaks


async def download(proxy_port: int, url: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--fail",
        "--noproxy",
        "",
        "-x",
        f"http://127.0.0.1:{proxy_port}",
        url,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    digest = hashlib.sha256()
    while chunk := await proc.stdout.read(CHUNK):
        digest.update(chunk)
    assert await proc.wait() == 0
    return digest.hexdigest()


async def upload(proxy_port: int, url: str, total: int) -> str:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--fail",
        "--noproxy",
        "",
        "-x",
        f"http://127.0.0.1:{proxy_port}",
        "-T",
        "-",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    for offset in range(0, total, CHUNK):
        proc.stdin.write(pattern(offset, min(CHUNK, total - offset)))
        await proc.stdin.drain()
    proc.stdin.close()
    answer = await proc.stdout.read()
    assert await proc.wait() == 0
    return answer.decode()


async def test_one_gib_download_is_intact_and_memory_stays_flat(
    pair: tuple[Process, Process], origin: RecordingOrigin
) -> None:
    url = f"{origin.url}/bytes/{GIB}"
    async with asyncio.timeout(240):
        digest, peaks = await sampled(pair, asyncio.ensure_future(download(pair[1].port, url)))
    assert digest == pattern_sha256(GIB)
    assert peaks["agent"] < RSS_LIMIT, peaks
    assert peaks["server"] < RSS_LIMIT, peaks


async def test_one_gib_upload_is_intact_and_memory_stays_flat(
    pair: tuple[Process, Process], origin: RecordingOrigin
) -> None:
    url = f"{origin.url}/sha256"
    async with asyncio.timeout(240):
        digest, peaks = await sampled(pair, asyncio.ensure_future(upload(pair[1].port, url, GIB)))
    assert digest == pattern_sha256(GIB)
    assert peaks["agent"] < RSS_LIMIT, peaks
    assert peaks["server"] < RSS_LIMIT, peaks
