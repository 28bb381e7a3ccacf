"""DirectStream over real loopback sockets: held like a tunnel stream, with its backpressure."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from fluidity.agent.direct import WINDOW, DirectStream
from fluidity.errors import PathError

WAIT = 10.0  # seconds: the bound on every network wait in this file
HOST = "127.0.0.1"
MIB = 1024 * 1024

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Holder:
    """A StreamHandler that records, and acknowledges only when told to."""

    def __init__(self, *, acknowledge: bool = True) -> None:
        self.stream: DirectStream | None = None
        self.auto_ack = acknowledge
        self.calls: list[str] = []
        self.data = bytearray()
        self.unacknowledged = 0
        self.changed = asyncio.Event()

    def stream_data(self, data: bytes) -> None:
        self._note("data")
        self.data += data
        if self.auto_ack and self.stream is not None:
            self.stream.acknowledge(len(data))
        else:
            self.unacknowledged += len(data)

    def stream_ended(self) -> None:
        self._note("ended")

    def stream_reset(self, reason: str) -> None:
        self._note(f"reset: {reason}")

    def stream_finished(self) -> None:
        self._note("finished")

    def stream_drained(self) -> None:
        self._note("drained")

    def _note(self, call: str) -> None:
        if self.calls[-1:] != [call]:
            self.calls.append(call)
        self.changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait for ``condition`` to hold after some callback, bounded by WAIT."""
        async with asyncio.timeout(WAIT):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def target() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(guarded, HOST, 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def open_started(port: int, holder: Holder) -> DirectStream:
    stream = await DirectStream.open(None, HOST, port, holder, timeout=WAIT)
    holder.stream = stream
    return stream


async def test_a_target_that_greets_and_closes_at_once(target: object) -> None:
    async def hello_and_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner\r\n")
        writer.write_eof()
        await reader.read()

    port = await target(hello_and_bye)  # type: ignore[operator]
    holder = Holder()
    stream = await open_started(port, holder)
    await holder.until(lambda: "ended" in holder.calls)
    assert (holder.calls, bytes(holder.data)) == (["data", "ended"], b"banner\r\n")
    stream.write_eof()  # both ways ended: the connection closes, with no reset
    assert stream.transport is not None
    await holder.until(lambda: stream.transport is None or stream.transport.is_closing())
    assert holder.calls == ["data", "ended"]


async def test_reading_pauses_at_one_window_until_acknowledged(target: object) -> None:
    payload = bytes(range(256)) * (4 * MIB // 256)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        await reader.read()

    port = await target(flood)  # type: ignore[operator]
    holder = Holder(acknowledge=False)
    stream = await open_started(port, holder)
    assert stream.transport is not None
    await holder.until(lambda: holder.unacknowledged >= WINDOW)
    assert not stream.transport.is_reading()
    assert WINDOW <= len(holder.data) < WINDOW + 512 * 1024  # at most one read beyond

    holder.auto_ack = True
    stream.acknowledge(holder.unacknowledged)
    assert stream.transport.is_reading()
    await holder.until(lambda: "ended" in holder.calls)
    assert hashlib.sha256(holder.data).digest() == hashlib.sha256(payload).digest()
    stream.abort()


async def test_a_full_socket_buffer_pauses_the_writer_until_drained(target: object) -> None:
    may_read = asyncio.Event()
    got: list[int] = []

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await may_read.wait()
        got.append(len(await reader.read()))

    port = await target(slow_reader)  # type: ignore[operator]
    holder = Holder()
    stream = await open_started(port, holder)
    chunk = b"x" * 65536
    sent = 0
    for _ in range(64 * MIB // len(chunk)):  # the kernel buffers take a few MiB at most
        sent += len(chunk)
        if not stream.write(chunk):
            break
    else:
        pytest.fail("the socket never filled")
    may_read.set()
    await holder.until(lambda: "drained" in holder.calls)
    stream.write_eof()
    await holder.until(lambda: bool(got))
    assert got == [sent]
    stream.abort()


async def test_a_reset_by_the_target_is_reported_with_the_authority(target: object) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    port = await target(reset)  # type: ignore[operator]
    holder = Holder()
    stream = await open_started(port, holder)
    assert stream.tunnel_alive  # a direct connection is never replayed on a new tunnel
    stream.write(b"ping")
    await holder.until(lambda: any(c.startswith("reset") for c in holder.calls))
    [reset_call] = holder.calls
    assert reset_call.startswith(f"reset: direct connection to 127.0.0.1:{port} lost")


async def test_after_abort_the_holder_hears_nothing(target: object) -> None:
    closed = asyncio.Event()

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"chatter")
        try:
            await reader.read()  # the abort resets the connection
        finally:
            closed.set()

    port = await target(talk)  # type: ignore[operator]
    holder = Holder(acknowledge=False)
    stream = await open_started(port, holder)
    stream.abort()
    async with asyncio.timeout(WAIT):
        await closed.wait()
    assert stream.write(b"ignored")
    stream.write_eof()
    assert holder.calls in ([], ["data"])  # the greeting may have come before the abort
    assert not any(call.startswith("reset") for call in holder.calls)


async def test_a_closed_port_is_a_path_error() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    with pytest.raises(PathError, match="Connection refused"):
        await DirectStream.open(None, HOST, port, Holder(), timeout=WAIT)
