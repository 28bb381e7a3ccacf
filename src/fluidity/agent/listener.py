"""The agent's listening sockets, accepting every waiting connection at each wake-up.

Why not ``loop.create_server``: uvloop (libuv 1.49 and later) accepts *one*
connection each time the listening socket is reported readable, that is one
per turn of the event loop. A busy agent turns its loop a few dozen times a
second (each turn carries the traffic of every open connection), so a burst of
new clients -- a build starting 1,000 downloads, a load test -- waits in the
kernel's accept queue for seconds: their requests time out or the queue
overflows (SYNs dropped, retried after 1 s, 3 s...). Measured with 1,000
connections through a busy agent: ~350 connections still queued after 3 s,
first answers after 5 s, wrk counting socket errors.

``BatchListener`` accepts the way asyncio's own selector loop does: at each
wake-up, every connection waiting (up to ``backlog``), and hands each to the
loop with ``connect_accepted_socket``. It is used under uvloop; every other
loop keeps ``create_server``, which already accepts in batches (selector
loops) or cannot watch a socket for readiness at all (Windows' proactor).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from fluidity.transport.sockopts import listening_socket

log = logging.getLogger(__name__)

# How long accepting pauses when the process is out of file descriptors (or
# memory for sockets): as asyncio's loop does, rather than spin on the error.
ACCEPT_RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class BatchListener:
    """Listening sockets on one address; the same surface the agent uses of ``asyncio.Server``."""

    def __init__(self, sockets: list[socket.socket], factory: ProtocolFactory) -> None:
        self.sockets = sockets
        self._factory = factory
        self._backlog = 1
        self._loop = asyncio.get_running_loop()
        self._handing_over: set[asyncio.Task[None]] = set()
        self._serving = False
        self._closed = asyncio.Event()

    @classmethod
    async def listen(
        cls, factory: ProtocolFactory, host: str, port: int, *, backlog: int
    ) -> BatchListener:
        """Bind and listen on every address ``host`` resolves to, and start accepting.

        Raises ``OSError`` (address in use, not available...) like ``create_server``.
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, _, proto, _, address in dict.fromkeys(infos):
                sockets.append(listening_socket(family, address, backlog, proto))
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        listener = cls(sockets, factory)
        listener._backlog = backlog
        listener._start()
        return listener

    def _start(self) -> None:
        self._serving = True
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept_waiting, sock)

    def _pause(self) -> None:
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())

    def _resume(self) -> None:
        if self._serving:
            self._start()

    def _accept_waiting(self, sock: socket.socket) -> None:
        """Accept the connections waiting on ``sock``, at most ``backlog`` of them."""
        for _ in range(self._backlog):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # the queue is empty
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                log.warning(
                    "cannot accept client connections (%s): pausing for %g s; "
                    "raise the open-file limit (ulimit -n) or max_client_connections lower",
                    exc.strerror,
                    ACCEPT_RETRY_DELAY,
                )
                self._pause()
                self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._hand_over(conn))
            self._handing_over.add(task)
            task.add_done_callback(self._handing_over.discard)

    async def _hand_over(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError as exc:  # the client left before its transport was made
            log.debug("client connection lost while being accepted: %s", exc)
            conn.close()

    def close(self) -> None:
        """Stop accepting and close the listening sockets (accepted connections live on)."""
        if not self._serving:
            return
        self._serving = False
        self._pause()
        for sock in self.sockets:
            sock.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Return once closed and every accepted connection has been handed over."""
        await self._closed.wait()
        if self._handing_over:
            await asyncio.gather(*self._handing_over, return_exceptions=True)


def batch_accept_needed(loop: asyncio.AbstractEventLoop) -> bool:
    """True under uvloop, whose own server accepts one connection per loop turn."""
    return type(loop).__module__.split(".")[0] == "uvloop"


async def listen(
    factory: ProtocolFactory, host: str, port: int, *, backlog: int
) -> asyncio.Server | BatchListener:
    """The agent's listener on ``host:port``: a ``BatchListener`` under uvloop, else
    ``create_server``. Raises ``OSError`` if the address cannot be bound."""
    loop = asyncio.get_running_loop()
    if batch_accept_needed(loop):
        return await BatchListener.listen(factory, host, port, backlog=backlog)
    # The default reuse_address is right on each platform: SO_REUSEADDR on
    # POSIX; never on Windows, where it would let another program take the port.
    return await loop.create_server(factory, host, port, backlog=backlog)
