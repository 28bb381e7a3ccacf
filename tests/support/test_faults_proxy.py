"""The fault proxy itself (tests/support/faults.py), between a loopback client and echo server.

The fault tests rely on it doing exactly what it says; these check each mode
on plain TCP, where the bytes are easy to count.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from support.faults import LOOPBACK, FaultProxy, Faults


@asynccontextmanager
async def echo_behind(faults: Faults) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of an echo server; every connection gets ``faults``."""
    writers: list[asyncio.StreamWriter] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass

    server = await asyncio.start_server(echo, LOOPBACK, 0)
    proxy = await FaultProxy(server.sockets[0].getsockname()[1], lambda i: faults).start()
    try:
        yield proxy
    finally:
        await proxy.close()
        server.close()
        for writer in writers:
            writer.transport.abort()
        await asyncio.wait_for(server.wait_closed(), 5)


async def open_client(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOOPBACK, proxy.port)


async def test_without_faults_bytes_and_half_closes_pass_through() -> None:
    async with echo_behind(Faults()) as proxy:
        reader, writer = await open_client(proxy)
        writer.write(b"x" * 100_000)
        writer.write_eof()
        async with asyncio.timeout(10):
            assert await reader.read() == b"x" * 100_000  # then EOF, passed back
        writer.close()


async def test_reset_after_n_bytes_forwards_exactly_n_then_resets_both_sides() -> None:
    async with echo_behind(Faults(reset_after=1000)) as proxy:
        reader, writer = await open_client(proxy)
        writer.write(b"y" * 600)  # 600 there, and the first 400 of the echo back
        received = bytearray()
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(10):
                while chunk := await reader.read(65536):
                    received += chunk
        assert len(received) <= 400
        assert proxy.links[0].forwarded == 1000
        writer.close()


async def test_a_blackhole_forwards_nothing_and_closes_nothing() -> None:
    async with echo_behind(Faults()) as proxy:
        reader, writer = await open_client(proxy)
        writer.write(b"before")
        async with asyncio.timeout(10):
            assert await reader.readexactly(6) == b"before"
        proxy.blackhole()
        writer.write(b"after")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):  # no byte, no EOF, no reset: silence
                await reader.read(1)
        fresh_reader, fresh = await open_client(proxy)  # new connections are healthy
        fresh.write(b"again")
        async with asyncio.timeout(10):
            assert await fresh_reader.readexactly(5) == b"again"
        writer.close()
        fresh.close()


async def test_sliced_writes_arrive_one_byte_at_a_time() -> None:
    async with echo_behind(Faults(slice_writes=True)) as proxy:
        reader, writer = await open_client(proxy)
        writer.write(b"z" * 64)
        reads = []
        async with asyncio.timeout(10):
            while sum(reads) < 64:
                reads.append(len(await reader.read(65536)))
        assert len(reads) > 8  # pieces, not one block
        writer.close()


async def test_latency_and_bandwidth_slow_the_bytes_down_by_at_least_their_amount() -> None:
    """100 KB at 200 KB/s each way with 50 ms each way: no sooner than 0.5 s + 0.1 s."""
    async with echo_behind(Faults(latency=0.05, bandwidth=200_000)) as proxy:
        reader, writer = await open_client(proxy)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"w" * 100_000)
        async with asyncio.timeout(20):
            assert await reader.readexactly(100_000) == b"w" * 100_000
        assert loop.time() - started >= 0.5 + 0.1
        writer.close()
