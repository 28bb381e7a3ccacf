"""Helpers for the WebSocket transport tests: a corporate CA, an in-process TLS-inspecting
relay, a relay that can freeze, and the three kinds of traffic a tunnel must carry."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection

from fluidity.pki.certs import init_ca, issue_server

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024


@dataclass(frozen=True)
class CorporateCA:
    """A CA that is *not* the Fluidity CA (a TLS-inspection CA, or a public one) and a
    server certificate it issued."""

    ca_cert: Path
    cert: Path
    key: Path
    common_name: str


def make_corporate_ca(
    directory: Path,
    common_name: str,
    *,
    dns: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = (LOOPBACK,),
) -> CorporateCA:
    ca = init_ca(directory, common_name=common_name)
    leaf = issue_server(directory, "leaf", dns=dns, ips=ips)
    return CorporateCA(ca.cert, leaf.cert, leaf.key, common_name)


def corporate_context(ca: CorporateCA, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.cert, ca.key)
    context.set_alpn_protocols(alpn)
    return context


@dataclass
class InspectingRelay:
    """A TLS-inspecting proxy in miniature: it ends the agent's TLS with a certificate
    from its own CA, opens its own TLS to the server (same ALPN, no client
    certificate), and passes the plaintext along -- recording every byte it sees."""

    ca: CorporateCA
    upstream: tuple[str, int]
    upstream_ca: Path
    seen: bytearray = field(default_factory=bytearray)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> InspectingRelay:
        context = corporate_context(self.ca, ["h2", "http/1.1"])
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol() or "http/1.1"
        upstream = ssl.create_default_context(cafile=str(self.upstream_ca))
        upstream.set_alpn_protocols([alpn])
        try:
            up_reader, up_writer = await asyncio.open_connection(
                *self.upstream, ssl=upstream, server_hostname="localhost"
            )
        except (OSError, ssl.SSLError):
            writer.close()
            return
        await self._splice(reader, writer, up_reader, up_writer)

    async def _splice(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            for w in (writer, up_writer):
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(CHUNK):
                self.seen += data
                writer.write(data)
                await writer.drain()


@dataclass
class FreezableRelay:
    """A plain TCP relay whose ``freeze`` stops every byte both ways, like a dead path."""

    upstream: tuple[str, int]
    port: int = 0
    _flowing: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> FreezableRelay:
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        self._flowing.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.update((writer, up_writer))
        with contextlib.suppress(OSError):
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(CHUNK):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.close()


# -- traffic -----------------------------------------------------------------------------


async def echo(ws: ServerConnection) -> None:
    """A WebSocket origin's handler: every message back to its sender."""
    async for message in ws:
        await ws.send(message)


def ws_url(server: WsServer) -> str:
    port = next(iter(server.sockets)).getsockname()[1]
    return f"ws://{LOOPBACK}:{port}/echo"


async def http_through(proxy: str, url: str) -> httpx.Response:
    """A plain-HTTP request sent to the agent as a forward proxy."""
    async with httpx.AsyncClient(proxy=proxy, timeout=20) as client:
        return await client.get(url)


async def connect_through(proxy_port: int, origin_port: int, path: str) -> bytes:
    """CONNECT to the origin through the agent, then an HTTP/1.1 GET inside; the body."""
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy_port)
    try:
        async with asyncio.timeout(20):
            writer.write(
                f"CONNECT {LOOPBACK}:{origin_port} HTTP/1.1\r\n"
                f"Host: {LOOPBACK}:{origin_port}\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = await reader.read(-1)
    finally:
        writer.close()
    return answer.partition(b"\r\n\r\n")[2]


async def websocket_through(proxy: str, url: str, message: str) -> str:
    """Open a WebSocket to an echo origin through the agent (CONNECT), send, return the echo."""
    async with asyncio.timeout(20), connect(url, proxy=proxy, open_timeout=20) as ws:
        await ws.send(message)
        await (await ws.ping())
        return str(await ws.recv())


def marker() -> str:
    """A string that appears nowhere unless we sent it."""
    return "MARKER-" + base64.b32encode(os.urandom(10)).decode()


@contextlib.asynccontextmanager
async def running(*things: InspectingRelay | FreezableRelay) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for thing in things:
            await thing.close()
