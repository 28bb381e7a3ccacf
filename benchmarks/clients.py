"""The measuring clients: latency, load, bulk, idle tunnels, memory over time.

Each speaks HTTP proxy to ``proxy`` (or straight to the origin when ``proxy``
is None) over loopback. Sequential measurements use blocking sockets with a
timeout on every call: the cheapest possible client, so the figures belong
to the system under test. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.systems import LOOPBACK, BenchmarkError

IO_TIMEOUT = 30.0
HEAD_END = b"\r\n\r\n"
MB = 1_000_000
GIB = 1 << 30
MIB = 1 << 20


# -- small blocking helpers -------------------------------------------------------------


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of an HTTP head; return (head, bytes after it)."""
    data = b""
    while HEAD_END not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchmarkError(f"connection closed before a complete head: {data[:200]!r}")
        data += chunk
        if len(data) > 65536:
            raise BenchmarkError("response head larger than 64 KiB")
    head, _, rest = data.partition(HEAD_END)
    return head, rest


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def open_connection(proxy: tuple[str, int] | None, target: tuple[str, int]) -> socket.socket:
    """A connected socket to ``target``, through a CONNECT on ``proxy`` if given."""
    sock = socket.create_connection(proxy or target, timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if proxy is not None:
        authority = f"{target[0]}:{target[1]}".encode()
        sock.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
        head, rest = read_head(sock)
        if status_of(head) != 200 or rest:
            sock.close()
            raise BenchmarkError(f"CONNECT {authority.decode()} answered {head[:200]!r}")
    return sock


def get_small(sock: socket.socket, host: bytes, path: bytes = b"/") -> None:
    """One GET on an open connection; reads the whole response (Content-Length)."""
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host))
    head, body = read_head(sock)
    if status_of(head) != 200:
        raise BenchmarkError(f"GET answered {head[:200]!r}")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchmarkError("response body cut short")
        body += chunk


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# -- new-connection latency -------------------------------------------------------------


def latency(
    proxy: tuple[str, int] | None, http_port: int, count: int, warmup: int
) -> dict[str, float]:
    """p50/p99 of: connect, CONNECT (if proxied), one small GET; a fresh connection each."""
    target = (LOOPBACK, http_port)
    host = f"{LOOPBACK}:{http_port}".encode()
    samples: list[float] = []
    for i in range(warmup + count):
        start = time.perf_counter()
        sock = open_connection(proxy, target)
        try:
            get_small(sock, host)
            elapsed = time.perf_counter() - start
        finally:
            sock.close()
        if i >= warmup:
            samples.append(elapsed * 1000)
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
        "samples": count,
    }


# -- requests per second ------------------------------------------------------------------


WRK_SCRIPT = """
wrk.method = "GET"
wrk.path = "{path}"
wrk.headers["Host"] = "{host}"
"""


def requests_per_second(
    proxy: tuple[str, int] | None, http_port: int, connections: int, seconds: float
) -> dict[str, object]:
    """Keep-alive GETs on ``connections`` connections for ``seconds``: wrk, else asyncio."""
    if shutil.which("wrk"):
        return _wrk(proxy, http_port, connections, seconds)
    return asyncio.run(_asyncio_load(proxy, http_port, connections, seconds))


def _wrk(
    proxy: tuple[str, int] | None, http_port: int, connections: int, seconds: float
) -> dict[str, object]:
    host = f"{LOOPBACK}:{http_port}"
    connect_to = f"{proxy[0]}:{proxy[1]}" if proxy else host
    path = f"http://{host}/" if proxy else "/"  # absolute form through a proxy
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "proxy.lua"
        script.write_text(WRK_SCRIPT.format(path=path, host=host))
        argv = [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--latency",
        ]
        argv += ["-s", str(script), f"http://{connect_to}/"]
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    match = re.search(r"Requests/sec:\s*([\d.]+)", out.stdout)
    if out.returncode != 0 or match is None:
        raise BenchmarkError(f"wrk failed ({out.returncode}): {out.stdout}{out.stderr}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out.stdout))
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out.stdout)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", out.stdout, re.MULTILINE)
    return {
        "rps": round(float(match.group(1))),
        "errors": errors + (int(bad.group(1)) if bad else 0),
        "p99_ms": _ms(float(p99.group(1)), p99.group(2)) if p99 else None,
        "tool": "wrk",
    }


def _ms(value: float, unit: str) -> float:
    return round(value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


async def _asyncio_load(
    proxy: tuple[str, int] | None, http_port: int, connections: int, seconds: float
) -> dict[str, object]:
    host = f"{LOOPBACK}:{http_port}"
    target = f"http://{host}/" if proxy else "/"
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    address = proxy or (LOOPBACK, http_port)
    deadline = time.monotonic() + seconds
    counts = [0, 0]  # done, errors
    latencies: list[float] = []

    async def worker() -> None:
        try:
            async with asyncio.timeout(seconds + IO_TIMEOUT):
                reader, writer = await asyncio.open_connection(*address)
                try:
                    while (sent := time.monotonic()) < deadline:
                        writer.write(request)
                        head = await reader.readuntil(HEAD_END)
                        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                        await reader.readexactly(int(length.group(1)) if length else 0)
                        counts[0] += 1
                        latencies.append(time.monotonic() - sent)
                finally:
                    writer.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            counts[1] += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return {
        "rps": round(counts[0] / (time.monotonic() - start)),
        "errors": counts[1],
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3) if latencies else None,
        "tool": "asyncio",
    }


# -- CPU and memory of the processes under test -----------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def rss_bytes(pids: list[int]) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


@dataclass
class RssSampler:
    """Samples the summed RSS of ``pids`` every ``interval`` s in a thread until stopped."""

    pids: list[int]
    interval: float = 0.1
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        start = time.monotonic()

        def run() -> None:
            while not self._stop.wait(self.interval):
                self.samples.append((time.monotonic() - start, rss_bytes(self.pids)))

        self.samples.append((0.0, rss_bytes(self.pids)))
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self.samples.append((self.samples[-1][0] + self.interval, rss_bytes(self.pids)))


# -- bulk transfer ------------------------------------------------------------------------


def bulk(proxy: tuple[str, int] | None, source_port: int, size: int) -> float:
    """Download ``size`` bytes through one CONNECT stream; return seconds taken."""
    sock = open_connection(proxy, (LOOPBACK, source_port))
    buffer = bytearray(4 * MIB)
    view = memoryview(buffer)
    try:
        start = time.perf_counter()
        sock.sendall(b"%d\n" % size)
        received = 0
        while received < size:
            n = sock.recv_into(view)
            if n == 0:
                raise BenchmarkError(f"bulk transfer cut at {received} of {size} bytes")
            received += n
        elapsed = time.perf_counter() - start
    finally:
        sock.close()
    return elapsed


def bulk_measured(
    proxy: tuple[str, int] | None, source_port: int, size: int, pids: list[int]
) -> dict[str, float]:
    """Throughput of one bulk download and the CPU seconds per GiB it cost ``pids``."""
    cpu_before = cpu_seconds(pids) if pids else 0.0
    elapsed = bulk(proxy, source_port, size)
    cpu = (cpu_seconds(pids) - cpu_before) if pids else 0.0
    return {"mb_s": size / elapsed / MB, "cpu_s_per_gib": cpu * GIB / size}


def transfer_with_rss(
    proxy: tuple[str, int] | None, source_port: int, size: int, pids: list[int]
) -> dict[str, object]:
    """One ``size`` download with the RSS of ``pids`` sampled throughout."""
    with RssSampler(pids) as sampler:
        elapsed = bulk(proxy, source_port, size)
    values = [rss for _, rss in sampler.samples]
    quarter = max(1, len(values) // 4)
    return {
        "bytes": size,
        "mb_s": round(size / elapsed / MB, 1),
        "rss_start_mb": round(values[0] / MB, 1),
        "rss_peak_mb": round(max(values) / MB, 1),
        "rss_end_mb": round(values[-1] / MB, 1),
        "growth_mb": round((max(values) - values[0]) / MB, 1),
        # flat: the last quarter of the run holds no more than the first quarter did
        "late_minus_early_mb": round((max(values[-quarter:]) - max(values[:quarter])) / MB, 1),
        "samples": len(values),
    }


# -- idle tunnels ---------------------------------------------------------------------------


def idle_tunnels(
    proxy: tuple[str, int], echo_port: int, count: int, pids: list[int]
) -> dict[str, float]:
    """Hold ``count`` CONNECT tunnels to the echo origin open; the RSS they cost.

    A tunnel the proxy refuses (any status but 200) is counted in ``refused``,
    not held; any other failure raises.
    """
    return asyncio.run(_idle(proxy, echo_port, count, pids))


async def _idle(
    proxy: tuple[str, int], echo_port: int, count: int, pids: list[int]
) -> dict[str, float]:
    refused: list[bytes] = []
    before = rss_bytes(pids)
    held: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(200)  # tunnels being opened at once
    authority = f"{LOOPBACK}:{echo_port}".encode()
    request = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)

    async def open_one(i: int) -> None:
        async with gate, asyncio.timeout(IO_TIMEOUT):
            reader, writer = await asyncio.open_connection(*proxy, limit=4096)
            held.append(writer)
            writer.write(request)
            head = await reader.readuntil(HEAD_END)
            if status_of(head) != 200:
                refused.append(head)
                return
            writer.write(b"ping")
            if await reader.readexactly(4) != b"ping":
                raise BenchmarkError(f"idle tunnel {i}: the echo did not come back")

    start = time.monotonic()
    try:
        await asyncio.gather(*(open_one(i) for i in range(count)))
        opened = time.monotonic() - start
        await asyncio.sleep(1.0)  # let the processes settle before measuring memory
        after = rss_bytes(pids)
    finally:
        for writer in held:
            writer.close()
    held_count = count - len(refused)
    if refused:
        print(f"  {len(refused)} idle tunnels refused, the first: {refused[0][:200]!r}")
    return {
        "tunnels": held_count,
        "refused": len(refused),
        "open_seconds": round(opened, 2),
        "rss_before_mb": round(before / MB, 1),
        "rss_total_mb": round(after / MB, 1),
        "rss_per_tunnel_kib": round((after - before) / max(held_count, 1) / 1024, 2),
    }


def median_of(runs: list[float]) -> float:
    return statistics.median(runs)
