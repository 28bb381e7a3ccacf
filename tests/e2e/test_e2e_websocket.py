"""WebSockets through the tunnel: the websockets client, many at once, both upgrade paths."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve

from support.harness import Tunnel


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.fixture
async def ws_origin() -> AsyncIterator[Server]:
    async with serve(echo, "127.0.0.1", 0) as server:
        yield server


def ws_url(server: Server) -> str:
    port = next(iter(server.sockets)).getsockname()[1]
    return f"ws://127.0.0.1:{port}/echo"


async def test_text_binary_and_ping_pong_pass_end_to_end(tunnel: Tunnel, ws_origin: Server) -> None:
    async with asyncio.timeout(20), connect(ws_url(ws_origin), proxy=tunnel.proxy) as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        blob = os.urandom(300_000)
        await ws.send(blob)
        assert await ws.recv() == blob
        latency = await (await ws.ping(b"are you there"))
        assert latency >= 0


async def test_two_hundred_websockets_at_once(tunnel: Tunnel, ws_origin: Server) -> None:
    url = ws_url(ws_origin)

    async def one(i: int) -> str:
        async with connect(url, proxy=tunnel.proxy, open_timeout=30) as ws:
            await ws.send(f"message {i}")
            reply = await ws.recv()
            await (await ws.ping())
            return str(reply)

    async with asyncio.timeout(60):
        replies = await asyncio.gather(*(one(i) for i in range(200)))
    assert replies == [f"message {i}" for i in range(200)]


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


async def test_upgrade_on_an_absolute_form_request_passes_through(
    tunnel: Tunnel, ws_origin: Server
) -> None:
    port = next(iter(ws_origin.sockets)).getsockname()[1]
    key = base64.b64encode(os.urandom(16)).decode()
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.proxy_port)
    writer.write(
        f"GET http://127.0.0.1:{port}/echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(masked_frame(0x1, b"through the tunnel"))
        frame = await reader.readexactly(2 + len(b"through the tunnel"))
        assert frame[2:] == b"through the tunnel"
        writer.write(masked_frame(0x9, b"ping!"))  # ping -> the origin answers pong
        pong = await reader.readexactly(2 + 5)
        assert pong[0] & 0x0F == 0xA and pong[2:] == b"ping!"
        writer.write(masked_frame(0x8, struct.pack("!H", 1000)))  # close
        close = await reader.readexactly(4)
        assert close[0] & 0x0F == 0x8
    writer.close()
