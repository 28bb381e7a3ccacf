"""An origin that records how each of its connections ended: orderly (FIN) or reset (RST).

``EndingOrigin`` is a keep-alive HTTP/1.1 server (h11). ``GET /bytes/N`` answers N
bytes with a Content-Length, written in 64 KiB pieces, each awaited (``drain``), so
a large answer is still being written when a client gives up on it. Each
connection, once over, leaves one word in ``endings``: ``"fin"`` when a read
returned end-of-file (the peer closed in order), ``"rst"`` when a read or write
failed with a reset or a broken pipe.
"""

from __future__ import annotations

import asyncio
import contextlib

import h11

PIECE = 64 * 1024


class EndingOrigin:
    """Serves ``/bytes/N``; ``endings`` lists how each finished connection ended."""

    def __init__(self) -> None:
        self.endings: list[str] = []
        self.served = 0  # responses written in full
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> EndingOrigin:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        ending = "open"
        try:
            ending = await self._exchanges(conn, reader, writer)
        except (ConnectionResetError, BrokenPipeError):
            ending = "rst"
        finally:
            self.endings.append(ending)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _exchanges(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> str:
        """Serve requests until the peer leaves; how it left."""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(PIECE)
                conn.receive_data(data)
                continue
            match event:
                case h11.ConnectionClosed():
                    return "fin"
                case h11.Request():
                    await self._answer(conn, writer, event.target.decode())
                case h11.EndOfMessage() if conn.our_state is h11.DONE:
                    conn.start_next_cycle()

    async def _answer(self, conn: h11.Connection, writer: asyncio.StreamWriter, path: str) -> None:
        size = int(path.removeprefix("/bytes/")) if path.startswith("/bytes/") else 5
        headers = [("Content-Length", str(size)), ("Content-Type", "application/octet-stream")]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
        sent = 0
        while sent < size:
            piece = min(PIECE, size - sent)
            writer.write(conn.send(h11.Data(data=b"x" * piece)))
            await writer.drain()
            sent += piece
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        self.served += 1
