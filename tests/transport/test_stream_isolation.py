"""One stream's failure costs that stream, never the tunnel that carries the others.

Found by the browser test: Chromium had reset a client socket the agent had not yet
heard about, so the agent's half-close towards it raised ``ENOTCONN`` inside the
tunnel's read callback, and the whole tunnel went down with it.
"""

from __future__ import annotations

import asyncio

import httpx

from fluidity.transport.streams import TunnelStream
from support.harness import LOOPBACK, Tunnel
from support.origins import RecordingOrigin


class FailingHandler:
    """A ``StreamHandler`` whose end of stream fails like a dead socket's ``write_eof``."""

    def __init__(self) -> None:
        self.stream: TunnelStream | None = None
        self.received = bytearray()
        self.ended = asyncio.Event()
        self.reset_reason: str | None = None

    def stream_data(self, data: bytes) -> None:
        self.received += data
        assert self.stream is not None
        self.stream.acknowledge(len(data))

    def stream_ended(self) -> None:
        self.ended.set()
        raise OSError(107, "Transport endpoint is not connected")

    def stream_reset(self, reason: str) -> None:
        self.reset_reason = reason

    def stream_finished(self) -> None:
        self.reset_reason = "finished"

    def stream_drained(self) -> None:
        pass


async def test_a_failing_stream_handler_costs_its_stream_not_the_tunnel(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    keeper = tunnel.agent.keeper
    conn = keeper.connection
    handler = FailingHandler()
    handler.stream = await keeper.open_stream(f"{LOOPBACK}:{origin.port}", handler)
    handler.stream.write(b"GET /x HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(10):
        await handler.ended.wait()
    assert handler.received.startswith(b"HTTP/1.1 200")
    assert handler.reset_reason is not None and "stream failed" in handler.reset_reason

    async with httpx.AsyncClient(proxy=tunnel.proxy, trust_env=False, timeout=10) as client:
        assert (await client.get(f"{origin.url}/after")).text == "hello"
    assert keeper.connection is conn and conn is not None and conn.is_usable
    assert keeper.reconnects == 0
