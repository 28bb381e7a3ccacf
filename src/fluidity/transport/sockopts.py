"""Socket options on an asyncio transport's socket.

``set_tcp_keepalive`` turns on TCP keepalive and turns off Nagle's delay on a
TCP socket, and does nothing to any other (a socketpair in tests, an inner
transport). ``reset_transport`` aborts a transport so that the peer sees a TCP
reset rather than an orderly end. Neither raises on account of the socket: one
already closed, or lacking an option on this system, is left as it is.
``listening_socket`` makes the non-blocking listening socket our own acceptors
(the server's TLS acceptor, the agent's batch listener) take connections from.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from typing import Any, cast


def reset_transport(transport: asyncio.BaseTransport) -> None:
    """Abort ``transport`` so the peer sees a TCP reset (RST), not an orderly end (FIN).

    ``abort()`` alone closes the socket, and the kernel then sends FIN unless
    unread bytes remain: a cut close-delimited body or CONNECT stream would look
    complete. SO_LINGER with a zero timeout makes the close a reset.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # not a TCP socket, or already closed: abort is all there is
    cast(asyncio.Transport, transport).abort()


def set_tcp_keepalive(transport: asyncio.BaseTransport, idle: int = 30) -> None:
    """TCP keepalive and no Nagle delay on the transport's socket, where supported."""
    found = _family_and_fileno(transport)
    if found is None:
        return  # not a TCP socket (tests over socketpair): nothing to tune
    # One plain socket object for all the options: uvloop's transport socket
    # builds a throwaway socket (and its syscalls) for every setsockopt call,
    # which tripled the syscalls of opening a tunnel. Family and type are
    # given, so the constructor asks the kernel nothing.
    family, fd = found
    sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
    try:
        _set_keepalive_options(sock, idle)
    finally:
        sock.detach()  # the transport owns the descriptor


def _set_keepalive_options(sock: socket.socket, idle: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return  # the socket is gone already: nothing to tune
    # windows: each probe option exists on some systems only (Windows 10 1709+ has
    # all three, older Windows and some BSDs lack some): set each one that exists.
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _family_and_fileno(transport: asyncio.BaseTransport) -> tuple[int, int] | None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    fd: int = sock.fileno()
    return (int(sock.family), fd) if fd >= 0 else None


def listening_socket(
    family: int, sockaddr: tuple[Any, ...], backlog: int, proto: int = 0
) -> socket.socket:
    """A bound, listening, non-blocking TCP socket, as asyncio's own servers make them:
    SO_REUSEADDR on POSIX (a restarted process may bind while old connections sit in
    TIME_WAIT), IPv6 sockets IPv6-only. Raises OSError, the socket closed."""
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
