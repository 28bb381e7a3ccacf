"""Which service an ``http/1.1`` connection asks for: the rule without a loop, the hand-over
over real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fluidity.transport.proxydoor import MAX_LINE, FirstRequest, classify

WAIT = 10.0


@pytest.mark.parametrize(
    ("head", "service"),
    [
        (b"GET /fluidity HTTP/1.1\r\n", "link"),
        (b"\r\nGET /other?x=1 HTTP/1.1\r\nHost: a\r\n", "link"),
        (b"CONNECT example.com:443 HTTP/1.1\r\n", "proxy"),
        (b"GET http://example.com/ HTTP/1.1\r\n", "proxy"),
        (b"POST http://example.com/x HTTP/1.1\n", "proxy"),
        (b"OPTIONS * HTTP/1.1\r\n", "proxy"),
        (b"garbage\r\n", "proxy"),  # the proxy's parser answers it (400)
        (b"GET /fluidity HTTP/1.1", None),  # not complete yet
        (b"", None),
        (b"G" * (MAX_LINE + 1), "proxy"),  # too long for the WebSocket transport
    ],
)
def test_classify(head: bytes, service: str | None) -> None:
    assert classify(head) == service


class Recorder(asyncio.Protocol):
    """A service that records what it was handed."""

    def __init__(self, name: str, chosen: asyncio.Queue[tuple[str, bytes]]) -> None:
        self.name = name
        self.chosen = chosen
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True

    def data_received(self, data: bytes) -> None:
        assert self.made
        self.chosen.put_nowait((self.name, data))


@pytest.fixture
async def door() -> AsyncIterator[tuple[int, asyncio.Queue[tuple[str, bytes]]]]:
    chosen: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FirstRequest(
            lambda: Recorder("link", chosen), lambda: Recorder("proxy", chosen), timeout=0.3
        ),
        "127.0.0.1",
        0,
    )
    try:
        yield server.sockets[0].getsockname()[1], chosen
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("pieces", "service"),
    [
        ([b"GET /flu", b"idity HTTP/1.1\r\nHost: x\r\n\r\n"], "link"),
        ([b"CONNECT a:1 HTTP/1.1\r\n", b"\r\n"], "proxy"),
    ],
)
async def test_the_chosen_service_gets_every_byte_in_order(
    door: tuple[int, asyncio.Queue[tuple[str, bytes]]], pieces: list[bytes], service: str
) -> None:
    port, chosen = door
    _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    try:
        received = b""
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if service == "link" and piece is pieces[0]:
                continue  # the line is not complete: nothing is handed over yet
            name, data = await asyncio.wait_for(chosen.get(), WAIT)
            assert name == service
            received += data
        assert received == b"".join(pieces)
    finally:
        writer.close()


async def test_a_silent_connection_is_closed(
    door: tuple[int, asyncio.Queue[tuple[str, bytes]]],
) -> None:
    port, chosen = door
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    try:
        writer.write(b"GET /half")  # never finishes its line
        assert await asyncio.wait_for(reader.read(1), WAIT) == b""
    finally:
        writer.close()
    assert chosen.empty()
