"""Abrupt client resets leave nothing behind: file descriptors and asyncio tasks.

Server, agent and origins all run in this process, so one count of open file
descriptors (psutil ``num_fds``) and of ``asyncio.all_tasks()`` covers every
socket and task the tunnel made for the clients.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import psutil

from support.harness import LOOPBACK, Tunnel
from support.origins import GatedOrigin, RecordingOrigin
from support.transfers import gated_origin, http_request, wait_for

CLIENTS = 200
BODY = 8 << 20
PAUSE = 256 << 10


async def reset_mid_stream(tunnel: Tunnel, origin: GatedOrigin, index: int) -> None:
    """A download (plain GET, or GET inside CONNECT for odd ``index``) that the client
    resets with SO_LINGER 0 once body bytes arrived, while the origin holds the rest."""
    reader, writer = await asyncio.open_connection(LOOPBACK, tunnel.proxy_port)
    target = f"{LOOPBACK}:{origin.port}"
    path = f"/bytes/{BODY}?pause={PAUSE}"
    async with asyncio.timeout(30):
        if index % 2:
            writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        else:
            writer.write(f"GET http://{target}{path} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(16 << 10)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST


def quiet(tunnel: Tunnel, origin: RecordingOrigin, gated: GatedOrigin) -> bool:
    """No client, stream, splice or origin connection left anywhere."""
    server = tunnel.server
    return not (
        tunnel.agent.clients
        or server.activity().active_streams
        or server.streams.splices
        or server.streams.dials
        or origin.writers
        or gated.writers
    )


def counts() -> tuple[int, int]:
    return psutil.Process().num_fds(), len(asyncio.all_tasks())


async def test_200_connections_reset_mid_stream_leave_no_file_descriptors_or_tasks(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    async with gated_origin() as gated:
        assert (await http_request(tunnel.proxy_port, f"{origin.url}/bytes/10")).intact(10)
        await wait_for(lambda: quiet(tunnel, origin, gated), within=20)
        before = counts()

        await asyncio.gather(*(reset_mid_stream(tunnel, gated, i) for i in range(CLIENTS)))
        assert gated.paused == CLIENTS  # every transfer was under way when it was reset

        server = tunnel.server
        await wait_for(lambda: not tunnel.agent.clients, within=20)
        await wait_for(lambda: server.activity().active_streams == 0, within=20)
        assert not server.streams.splices and not server.streams.dials
        gated.release()  # the origin's held answers now write into reset sockets and end
        await wait_for(lambda: quiet(tunnel, origin, gated), within=20)
        await wait_for(lambda: counts() == before, within=20)  # sockets close in callbacks
        assert counts() == before

        # And the tunnel carries on.
        assert (await http_request(tunnel.proxy_port, f"{origin.url}/bytes/10")).intact(10)
