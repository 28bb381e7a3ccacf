"""fluidity.agent.listener: a burst of queued connections is accepted at once.

uvloop's own server accepts one connection per turn of the loop, so a busy
agent left a burst of clients in the kernel's accept queue for seconds. These
tests queue connections while the loop cannot run (blocking connects complete
in the kernel), then give the loop a few turns: every connection must have
been accepted, on uvloop and on asyncio's loop alike.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from fluidity.agent.listener import BatchListener, batch_accept_needed, listen

WAIT = 10.0
HOST = "127.0.0.1"
BURST = 200
TURNS = 20  # loop turns allowed to accept the whole burst (one per turn would take BURST)


class Counted(asyncio.Protocol):
    made: list[Counted] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        Counted.made.append(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def queue_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections the kernel completes while the event loop does not run."""
    clients = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=WAIT)
        clients.append(sock)
    return clients


def test_a_burst_queued_while_the_loop_was_busy_is_accepted_within_a_few_turns(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def scenario() -> None:
        Counted.made = []
        server = await listen(Counted, HOST, 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        clients = queue_connections(port, BURST)  # blocks the loop, as a busy agent does
        try:
            for _ in range(TURNS):
                await asyncio.sleep(0)  # one loop turn each: counting turns, not waiting for time
                if len(Counted.made) == BURST:
                    break
            assert len(Counted.made) == BURST
            # and they work: an echo on the last one accepted
            clients[-1].sendall(b"ping")
            await asyncio.sleep(0)
            assert await asyncio.to_thread(clients[-1].recv, 4) == b"ping"
        finally:
            for sock in clients:
                sock.close()
            for proto in Counted.made:
                proto.transport.close()
            server.close()
            await server.wait_closed()

    run(scenario())


def test_uvloop_gets_the_batch_listener_and_asyncio_its_own_server() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def which() -> bool:
        return batch_accept_needed(asyncio.get_running_loop())

    assert asyncio.run(which()) is False
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        assert r.run(which()) is True


def test_an_address_in_use_raises_oserror_and_leaves_no_socket_open() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind((HOST, 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(OSError):
                await BatchListener.listen(Counted, HOST, port, backlog=16)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(asyncio.wait_for(scenario(), WAIT))


def test_closing_stops_accepting_and_frees_the_port() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        server = await BatchListener.listen(Counted, HOST, 0, backlog=16)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, port), timeout=WAIT).close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(asyncio.wait_for(scenario(), WAIT))
