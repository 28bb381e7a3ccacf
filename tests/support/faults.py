"""A TCP fault proxy for tests, on loopback only: a bad network between agent and server.

``FaultProxy`` listens on ``127.0.0.1:0`` and joins each connection it accepts
to a fresh connection to ``127.0.0.1:target_port``, forwarding bytes both ways
through the faults chosen for that connection (``faults_for(index)``, index 0
for the first connection accepted)::

    latency       seconds added to every chunk, each direction; pipelined, so
                  throughput is unchanged
    bandwidth     bytes per second, each direction (a token bucket)
    slice_writes  forward one byte per write, yielding to the event loop between
                  bytes, so the receiver reads tiny pieces (TLS records, HTTP/2
                  frames and HTTP heads split at every possible point)
    reset_after   after this many bytes (both directions together), reset both
                  sides (TCP RST, SO_LINGER 0)

``blackhole()`` makes every current connection stop forwarding, silently: no
byte passes, nothing is closed or reset, as when a middlebox drops a flow.
Connections accepted afterwards are healthy again, so a peer that notices
and reconnects recovers.

Half-closes pass through; a reset on one side resets the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Faults:
    """What one proxied connection suffers; the defaults forward faithfully."""

    latency: float = 0.0
    bandwidth: float = 0.0  # bytes per second each way; 0 = unlimited
    slice_writes: bool = False
    reset_after: int = 0  # bytes both ways together; 0 = never


def reset(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class Link:
    """One proxied connection: the accepted side ``a``, the upstream side ``b``."""

    faults: Faults
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    forwarded: int = 0
    blackholed: bool = False
    closed: bool = False
    _ends: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        for sock in (self.a[1], self.b[1]):
            raw = sock.get_extra_info("socket")
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for (reader, _), (_, writer) in ((self.a, self.b), (self.b, self.a)):
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._read(reader, queue)))
            self._tasks.append(loop.create_task(self._write(queue, writer)))

    def reset(self) -> None:
        """RST both sides now."""
        if not self.closed:
            self.closed = True
            reset(self.a[1])
            reset(self.b[1])

    async def aclose(self) -> None:
        self.reset()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _hold(self) -> None:
        """Blackholed: forward nothing, ever; ``aclose`` cancels the wait."""
        await asyncio.get_running_loop().create_future()

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk = await reader.read(READ_SIZE)
                if self.blackholed:
                    await self._hold()
                await queue.put((loop.time() + self.faults.latency, chunk))
                if not chunk:
                    return
        except (ConnectionError, OSError):
            self.reset()

    async def _write(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        bucket = _Bucket(self.faults.bandwidth, loop.time())
        try:
            while True:
                due, chunk = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())  # the injected latency
                if self.blackholed:
                    await self._hold()
                if not chunk:
                    self._end(writer)
                    return
                for piece in self._pieces(chunk, bucket.piece_size):
                    await bucket.take(len(piece), loop)
                    if self.blackholed:
                        await self._hold()
                    if not self._forward(writer, piece):
                        return
                    await writer.drain()
                    if self.faults.slice_writes:
                        await asyncio.sleep(0)  # let the receiver read this one byte
        except (ConnectionError, OSError):
            self.reset()

    def _pieces(self, chunk: bytes, size: int) -> list[bytes]:
        step = 1 if self.faults.slice_writes else size
        return [chunk[i : i + step] for i in range(0, len(chunk), step)]

    def _forward(self, writer: asyncio.StreamWriter, piece: bytes) -> bool:
        """Write ``piece``, or the part of it before the reset point; False once reset."""
        limit = self.faults.reset_after
        if limit and self.forwarded + len(piece) >= limit:
            writer.write(piece[: limit - self.forwarded])
            self.forwarded = limit
            self.reset()
            return False
        writer.write(piece)
        self.forwarded += len(piece)
        return True

    def _end(self, writer: asyncio.StreamWriter) -> None:
        if self.closed:
            return
        if writer.can_write_eof():
            writer.write_eof()
        self._ends += 1
        if self._ends == 2:
            self.closed = True
            self.a[1].close()
            self.b[1].close()


class _Bucket:
    """A token bucket: ``take(n)`` waits until ``n`` more bytes fit the rate."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.free_at = now
        # Pieces of a fiftieth of a second keep the rate smooth.
        self.piece_size = max(1, int(rate / 50)) if rate else READ_SIZE

    async def take(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        if not self.rate:
            return
        self.free_at = max(self.free_at, loop.time()) + size / self.rate
        delay = self.free_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # the injected bandwidth limit


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port`` through ``Faults``."""

    def __init__(
        self, target_port: int, faults_for: Callable[[int], Faults] = lambda index: Faults()
    ) -> None:
        self.target_port = target_port
        self.faults_for = faults_for
        self.links: list[Link] = []
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._joining: set[asyncio.StreamWriter] = set()  # accepted, upstream not yet open
        self._closed = False

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def blackhole(self) -> None:
        """Every current connection stops forwarding, silently; new ones are healthy."""
        for link in self.links:
            link.blackholed = True

    def reset_all(self) -> None:
        """RST every current connection, both sides."""
        for link in self.links:
            link.reset()

    async def close(self) -> None:
        self._closed = True
        for writer in list(self._joining):
            reset(writer)
        if self._server is not None:
            self._server.close()
        for link in self.links:
            await link.aclose()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        faults = self.faults_for(self.accepted)
        self.accepted += 1
        self._joining.add(writer)
        try:
            async with asyncio.timeout(10):
                upstream = await asyncio.open_connection(LOOPBACK, self.target_port)
        except (OSError, TimeoutError):
            reset(writer)
            return
        finally:
            self._joining.discard(writer)
        if self._closed:  # the proxy closed while this one was joining
            reset(writer)
            reset(upstream[1])
            return
        link = Link(faults, (reader, writer), upstream)
        self.links.append(link)
        link.start()
