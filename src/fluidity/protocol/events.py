"""What the tunnel protocol reports: small frozen dataclasses, one per happening.

The asyncio driver dispatches them with one ``match``; tests assert on them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamRequested:
    """Server side: the agent asked for a tunnel to ``authority`` (``host:port``)."""

    stream_id: int
    authority: str


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    """Agent side: the server dialled the target; bytes may flow."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamRejected:
    """Agent side: the server answered the CONNECT with an error status."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes for a stream. Hand them on, then call ``acknowledge(stream_id, len(data))``."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer will send no more bytes on this stream (a half-close)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone: reset by the peer or, with ``remote=False``, by us."""

    stream_id: int
    error_code: int
    remote: bool = True


@dataclass(frozen=True, slots=True)
class SendBufferDrained:
    """The stream's outbound buffer fell below the low-water mark: resume its source."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """The peer answered one of our PINGs."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The peer sent GOAWAY: no new streams; ``last_stream_id`` tells which of ours it saw."""

    error_code: int
    last_stream_id: int
    reason: str


TunnelEvent = (
    StreamRequested
    | StreamAccepted
    | StreamRejected
    | DataReceived
    | StreamEnded
    | StreamReset
    | SendBufferDrained
    | PingAcknowledged
    | ConnectionTerminated
)
