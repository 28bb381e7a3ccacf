"""fluidity.agent.path over real loopback sockets, on asyncio's loop and on uvloop (the program's).

The handover from a stream pair to a protocol must lose nothing: bytes the reader
had buffered, an end of stream it had already seen, data that arrives between the
end of a TLS handshake and the moment the protocol is attached.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trustme

from fluidity.agent import path
from fluidity.agent.path import attach, attach_tls, open_path
from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.errors import PathError, UpstreamProxyError

WAIT = 10.0  # seconds: the bound on every network wait in this file
HOST = "127.0.0.1"


class Recorder(asyncio.Protocol):
    """Records what a protocol hears, in order; ``done`` resolves at the end of stream."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wanted: tuple[int, asyncio.Future[bytes]] | None = None

    async def received(self, size: int) -> bytes:
        """The data once ``size`` bytes have arrived."""
        if len(self.data) < size:
            self._wanted = (size, asyncio.get_running_loop().create_future())
            await self._wanted[1]
        return bytes(self.data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("made")
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.calls[-1:] != ["data"]:
            self.calls.append("data")
        self.data += data
        if self._wanted is not None and len(self.data) >= self._wanted[0]:
            self._wanted[1].set_result(bytes(self.data))
            self._wanted = None

    def eof_received(self) -> bool:
        self.calls.append("eof")
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler, context: ssl.SSLContext | None = None) -> asyncio.Server:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(guarded, HOST, 0, ssl=context)


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


# -- attach ---------------------------------------------------------------------------


def test_attach_hands_over_the_bytes_the_reader_held(run: Any) -> None:
    async def body() -> None:
        async def speak_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"more?"
            writer.write(b" world")
            writer.write_eof()
            await reader.read()

        async with await serve(speak_first) as server:
            streams = await open_path(None, HOST, port_of(server), timeout=WAIT)
            assert await streams[0].readexactly(1) == b"h"  # the rest stays buffered
            recorder = Recorder()
            transport = await attach(streams, recorder)
            transport.write(b"more?")
            await recorder.done
            assert bytes(recorder.data) == b"ello world"
            assert recorder.calls[:3] == ["made", "data", "eof"]
            transport.close()

    run(body())


def test_attach_reports_an_end_the_reader_had_already_seen(run: Any) -> None:
    async def body() -> None:
        async def say_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"bye")
            writer.write_eof()
            await reader.read()

        async with await serve(say_bye) as server:
            reader, writer = await open_path(None, HOST, port_of(server), timeout=WAIT)
            assert await reader.read() == b"bye"  # the reader has seen the end
            recorder = Recorder()
            transport = await attach((reader, writer), recorder)
            await recorder.done
            assert recorder.calls[:2] == ["made", "eof"]
            transport.close()

    run(body())


def test_attach_to_a_reset_connection_is_a_path_error(run: Any) -> None:
    async def body() -> None:
        async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

        async with await serve(reset) as server:
            reader, writer = await open_path(None, HOST, port_of(server), timeout=WAIT)
            with pytest.raises(ConnectionResetError):
                await reader.read()
            with pytest.raises(PathError, match="closed before it could be used"):
                await attach((reader, writer), Recorder())

    run(body())


# -- attach_tls -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    ca.configure_trust(client)
    return server, client


def test_attach_tls_delivers_what_the_server_says_first(run: Any, tls: Any) -> None:
    server_context, client_context = tls

    async def body() -> None:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"greetings")  # sent the moment the handshake ends
            await writer.drain()
            writer.write(await reader.readexactly(4))
            await reader.read()

        async with await serve(greet, server_context) as server:
            streams = await open_path(None, HOST, port_of(server), timeout=WAIT)
            recorder = Recorder()
            transport = await attach_tls(
                streams, recorder, client_context, server_hostname="localhost", timeout=WAIT
            )
            assert transport.get_extra_info("ssl_object").version() == "TLSv1.3"
            transport.write(b"ping")
            assert await recorder.received(len(b"greetingsping")) == b"greetingsping"
            assert recorder.calls == ["made", "data"]
            transport.close()

    run(body())


class BufferedRecorder(asyncio.BufferedProtocol):
    """A buffered protocol with a 3-byte buffer: every delivery takes several rounds."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.buffer = bytearray(3)
        self.arrived = asyncio.Event()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]
        self.arrived.set()


def test_attach_tls_feeds_a_buffered_protocol_through_its_buffers(run: Any, tls: Any) -> None:
    server_context, client_context = tls

    async def body() -> None:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"greetings")  # may arrive before the protocol is attached
            await writer.drain()
            writer.write(await reader.readexactly(4))
            await reader.read()

        async with await serve(greet, server_context) as server:
            streams = await open_path(None, HOST, port_of(server), timeout=WAIT)
            recorder = BufferedRecorder()
            transport = await attach_tls(
                streams, recorder, client_context, server_hostname="localhost", timeout=WAIT
            )
            transport.write(b"ping")
            async with asyncio.timeout(WAIT):
                while bytes(recorder.data) != b"greetingsping":
                    recorder.arrived.clear()
                    await recorder.arrived.wait()
            transport.close()

    run(body())


def test_attach_tls_closes_the_connection_when_verification_fails(run: Any, tls: Any) -> None:
    server_context, _ = tls
    untrusting = ssl.create_default_context()

    async def body() -> None:
        async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()

        async with await serve(watch, server_context) as server:
            streams = await open_path(None, HOST, port_of(server), timeout=WAIT)
            with pytest.raises(ssl.SSLCertVerificationError):
                await attach_tls(
                    streams, Recorder(), untrusting, server_hostname="localhost", timeout=WAIT
                )
            assert streams[1].transport.is_closing()

    run(body())


# -- open_path ------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_refused_connection_is_a_502_path_error(run: Any) -> None:
    async def body() -> None:
        port = closed_port()
        with pytest.raises(PathError) as caught:
            await open_path(None, HOST, port, timeout=WAIT)
        assert str(caught.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"
        assert caught.value.status == 502

    run(body())


def test_a_missing_password_variable_is_an_upstream_proxy_error(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLUIDITY_TEST_NO_SUCH_PASSWORD", raising=False)
    config = UpstreamProxyConfig(
        f"http://{HOST}:{closed_port()}",
        username="alice",
        password_env="FLUIDITY_TEST_NO_SUCH_PASSWORD",
    )

    async def body() -> None:
        with pytest.raises(UpstreamProxyError, match="FLUIDITY_TEST_NO_SUCH_PASSWORD is not set"):
            await open_path(config, HOST, 443, timeout=WAIT)

    run(body())


def test_held_bytes_reach_a_buffered_protocol_through_its_small_buffer() -> None:
    recorder = BufferedRecorder()
    path._deliver(recorder, b"greetings, all")  # what the holder replays on hand-over
    assert bytes(recorder.data) == b"greetings, all"


def test_a_buffered_protocol_without_room_is_an_error_not_a_hang() -> None:
    recorder = BufferedRecorder()
    recorder.buffer = bytearray()
    with pytest.raises(BufferError, match="no room"):
        path._deliver(recorder, b"x")
