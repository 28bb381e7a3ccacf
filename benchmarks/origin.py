"""The benchmark's target: a fast loopback origin in its own process.

Three listeners, each an ``asyncio.Protocol`` on uvloop so that the origin is
never what a measurement measures:

* ``http``: answers every HTTP/1.1 request head with a small fixed response
  (``Content-Length``, keep-alive), pipelining included. It does not read
  request bodies: the benchmark sends none.
* ``echo``: sends back every byte it receives (idle tunnels, liveness checks).
* ``source``: reads one ASCII line ``N\\n`` and answers exactly ``N`` bytes,
  honouring ``pause_writing`` so its memory stays flat, then closes.

Run as ``python -m benchmarks.origin``: it prints one JSON line with the three
ports, then serves until its standard input closes (so it never outlives the
benchmark that started it).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import cast

BODY = b"hello from the benchmark origin\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
HEAD_END = b"\r\n\r\n"
SOURCE_BLOCK = memoryview(bytes(range(256)) * 4096)  # 1 MiB written at a time
MAX_HEAD = 64 * 1024


class HttpResponder(asyncio.Protocol):
    """Answers each complete request head with ``RESPONSE``; bodies are not expected."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        heads = buffer.count(HEAD_END)
        if heads:
            assert self.transport is not None
            self.transport.write(RESPONSE * heads)
            buffer = buffer[buffer.rfind(HEAD_END) + 4 :]
        if len(buffer) > MAX_HEAD:
            assert self.transport is not None
            self.transport.close()
        self.buffer = buffer


class Echo(asyncio.Protocol):
    """Writes back what it reads."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Source(asyncio.Protocol):
    """Reads ``N\\n``, writes ``N`` bytes as fast as the socket takes them, then closes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.line = b""
        self.remaining = -1
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.remaining >= 0:
            return  # only the first line matters
        self.line += data
        if b"\n" in self.line:
            self.remaining = int(self.line.split(b"\n", 1)[0])
            self._produce()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._produce()

    def _produce(self) -> None:
        assert self.transport is not None
        while self.remaining > 0 and not self.paused:
            size = min(self.remaining, len(SOURCE_BLOCK))
            self.transport.write(SOURCE_BLOCK[:size])
            self.remaining -= size
        if self.remaining == 0:
            self.remaining = -2  # done; close once written
            self.transport.close()


async def serve(host: str = "127.0.0.1") -> None:
    """Listen on three free ports, announce them on stdout, serve until stdin closes."""
    loop = asyncio.get_running_loop()
    servers = {
        name: await loop.create_server(factory, host, 0, backlog=4096, reuse_address=True)
        for name, factory in (("http", HttpResponder), ("echo", Echo), ("source", Source))
    }
    ports = {name: srv.sockets[0].getsockname()[1] for name, srv in servers.items()}
    print(json.dumps(ports), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # returns at EOF: the parent is gone
    for srv in servers.values():
        srv.close()


def main() -> None:
    from benchmarks.limits import raise_nofile

    raise_nofile()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
