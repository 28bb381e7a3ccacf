"""The transport of a protocol that runs inside another connection, and delivery to it.

A ``TunnelConnection`` expects an asyncio transport under it. When the tunnel
runs inside a WebSocket (``fluidity.transport.wslink``) it has no socket of
its own: its transport is an ``InnerTransport``, which passes every call to the
``PlaintextLink`` under it in the same call (no buffering, no tasks), and
pauses and resumes reading on the link's outer connection. Bytes go the other
way through ``deliver``, which hands them to any protocol, buffered or plain
(the front door uses it too, for the protocol it hands a connection to).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast


class PlaintextLink(Protocol):
    """What an ``InnerTransport`` runs on: a link that encrypts and carries plaintext."""

    @property
    def outer(self) -> asyncio.Transport | None:
        """The connection the link itself runs on; None before it is made."""

    def send_plaintext(self, data: bytes) -> None:
        """Encrypt and send ``data`` (dropped once the link is closing)."""

    def close(self) -> None:
        """Close the link in order, after what is queued."""

    def abort(self) -> None:
        """Drop the link at once."""

    def is_closing(self) -> bool:
        """True once the link is closing or gone."""

    def inner_extra(self, name: str, default: Any) -> Any:
        """The ``get_extra_info`` answer for the tunnel protocol."""


class InnerTransport(asyncio.Transport):
    """What the tunnel protocol sees as its transport: plaintext in and out of the link."""

    def __init__(self, link: PlaintextLink) -> None:
        super().__init__()
        self._link = link
        self._protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._link.send_plaintext(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self._link.close()

    def abort(self) -> None:
        self._link.abort()

    def is_closing(self) -> bool:
        return self._link.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._link.inner_extra(name, default)

    def pause_reading(self) -> None:
        if self._link.outer is not None:
            self._link.outer.pause_reading()

    def resume_reading(self) -> None:
        if self._link.outer is not None:
            self._link.outer.resume_reading()

    def is_reading(self) -> bool:
        outer = self._link.outer
        return outer is not None and outer.is_reading()

    def get_write_buffer_size(self) -> int:
        outer = self._link.outer
        return outer.get_write_buffer_size() if outer is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._link.outer is not None:
            self._link.outer.set_write_buffer_limits(high, low)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol


def deliver(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand ``data`` to a protocol, buffered (``get_buffer``/``buffer_updated``) or not."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    else:
        cast(asyncio.Protocol, protocol).data_received(data)
