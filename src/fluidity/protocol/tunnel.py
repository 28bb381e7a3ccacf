"""Many CONNECT tunnels over one HTTP/2 connection, without I/O.

``TunnelProtocol`` wraps an ``h2`` connection for either side. Bytes in,
events out, bytes to send::

    events = protocol.receive_data(chunk)   # -> list[TunnelEvent]
    transport.write(protocol.data_to_send())

The agent opens one stream per proxied connection with ``open_stream(authority)``
(an RFC 9113 section 8.5 ``CONNECT``); the server answers with
``accept_stream`` or ``reject_stream``. After that a stream carries raw bytes
both ways.

Flow control is where the theory lives:

* Inbound, the *connection* window is handed back as soon as bytes arrive, so
  one slow stream never stalls the others; the *stream* window is handed back
  only when the consumer calls ``acknowledge`` -- after it has passed the bytes
  on. A stream therefore never buffers more than its window (``STREAM_WINDOW``)
  in the receiver, and a slow consumer slows exactly its own sender.
* Outbound, ``send`` queues bytes per stream and writes as much as the peer's
  windows allow. When a stream's queue passes ``HIGH_WATER`` ``send`` returns
  False: the caller pauses its source until ``SendBufferDrained``. While the
  driver's transport is congested (``pause_output``) no DATA is produced, so
  control frames such as PING never queue behind megabytes of payload.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from enum import Enum

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from fluidity.errors import StreamError, TooManyStreams, TunnelClosed
from fluidity.protocol import h2patch
from fluidity.protocol.events import (
    ConnectionTerminated,
    DataReceived,
    PingAcknowledged,
    SendBufferDrained,
    StreamAccepted,
    StreamEnded,
    StreamRejected,
    StreamRequested,
    StreamReset,
    TunnelEvent,
)
from fluidity.protocol.h2fast import CountingH2Connection

h2patch.apply()

STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 64 * 1024 * 1024
MAX_FRAME_SIZE = 256 * 1024
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
MAX_REASON = 1024


MAX_CLOSED_STREAMS = 4096


class _H2Connection(CountingH2Connection):
    """h2's connection (counting open streams cheaply: see ``h2fast``), remembering
    fewer closed streams.

    h2 keeps how each closed stream ended so that a frame arriving late on a
    stream we reset is ignored (RFC 9113 section 5.4.2) rather than taken for a
    protocol error. It remembers 65,536 of them, about 7.5 MiB per connection
    once a tunnel has carried that many streams. Late frames come within a
    round trip of the reset; 4,096 covers a round trip even at thousands of
    streams a second, for about 0.5 MiB.
    """

    MAX_CLOSED_STREAMS = MAX_CLOSED_STREAMS


class Side(Enum):
    AGENT = "agent"
    SERVER = "server"


@dataclass(slots=True)
class _Stream:
    """Our bookkeeping for one stream; h2 keeps the protocol state."""

    # None while nothing waits: an empty deque costs ~600 bytes, times every idle
    # tunnel on both sides.
    pending: deque[bytes | memoryview] | None = None
    pending_size: int = 0
    end_requested: bool = False
    local_ended: bool = False
    remote_ended: bool = False
    source_paused: bool = False
    unacked: int = 0
    rejected_status: int = 0
    rejected_body: bytes = b""


class TunnelProtocol:
    """One side of a tunnel connection: h2 plus per-stream buffering and flow control."""

    def __init__(self, side: Side, *, max_streams: int = 1000) -> None:
        config = h2.config.H2Configuration(
            client_side=side is Side.AGENT,
            header_encoding=None,
            validate_inbound_headers=True,
        )
        self.side = side
        self._h2 = _H2Connection(config=config)
        self._streams: dict[int, _Stream] = {}
        # Streams holding bytes (or an end) that the windows or a congested
        # transport kept back: the only ones a window update or resume can move.
        # Walking every stream instead costs O(n) per WINDOW_UPDATE.
        self._waiting: dict[int, None] = {}  # an ordered set
        self._conn_unacked = 0
        self._output_paused = False
        self._refusing = False
        self._ping_ids = itertools.count(1)
        self._max_streams = max_streams
        self._finished: list[int] = []

    # -- connection ---------------------------------------------------------

    def initiate(self) -> None:
        """Queue the preface and our settings: large windows and frames."""
        self._h2.initiate_connection()
        settings: dict[h2.settings.SettingCodes | int, int] = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
        }
        if self.side is Side.SERVER:
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = self._max_streams
        else:
            settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0  # see h2fast: no pushed streams
        # A settings *change* after the preface: h2 only raises its inbound
        # frame-size limit once the peer acknowledges it.
        self._h2.update_settings(settings)
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport, in order; empty when there are none."""
        return self._h2.data_to_send()

    def receive_data(self, data: bytes | memoryview) -> list[TunnelEvent]:
        """Feed bytes read from the transport; return what happened.

        ``data`` is copied before this returns: the caller may reuse its buffer.

        Raises ``TunnelClosed`` when the peer broke the protocol; a GOAWAY
        saying why is then waiting in ``data_to_send()``.
        """
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            raise TunnelClosed(f"HTTP/2 protocol error from peer: {exc}") from exc
        events: list[TunnelEvent] = []
        for event in h2_events:
            self._dispatch(event, events)
        return events

    def ping(self) -> bytes:
        """Send a PING; its ``PingAcknowledged`` carries the returned payload."""
        payload = next(self._ping_ids).to_bytes(8, "big")
        self._h2.ping(payload)
        return payload

    def pause_output(self) -> None:
        """The transport is congested: produce no more DATA until ``resume_output``."""
        self._output_paused = True

    def resume_output(self) -> list[TunnelEvent]:
        """The transport drained: send what the windows allow."""
        self._output_paused = False
        events: list[TunnelEvent] = []
        self._flush_all(events)
        return events

    def refuse_new_streams(self) -> None:
        """Draining: answer every new CONNECT with RST_STREAM(REFUSED_STREAM).

        h2 closes the whole connection once a GOAWAY is sent, so GOAWAY comes
        last (``close``), after the open streams have finished.
        """
        self._refusing = True

    def close(self, error_code: ErrorCodes = ErrorCodes.NO_ERROR, reason: str = "") -> None:
        """Send GOAWAY. No stream can carry data afterwards."""
        try:
            self._h2.close_connection(error_code=error_code, additional_data=reason.encode())
        except h2.exceptions.ProtocolError:
            pass  # already closed: nothing more to say

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def is_open(self) -> bool:
        """False once either side sent GOAWAY."""
        return self._h2.state_machine.state is not h2.connection.ConnectionState.CLOSED

    # -- streams ------------------------------------------------------------

    def open_stream(self, authority: str) -> int:
        """Agent: ask the server for a tunnel to ``host:port``; returns the stream id."""
        stream_id: int = self._h2.get_next_available_stream_id()
        headers = [(b":method", b"CONNECT"), (b":authority", authority.encode("idna"))]
        try:
            self._h2.send_headers(stream_id, headers)
        except h2.exceptions.TooManyStreamsError as exc:
            limit = self._h2.remote_settings.max_concurrent_streams
            raise TooManyStreams(
                f"the tunnel already carries {limit} streams, the server's maximum "
                "(limits.max_streams_per_tunnel in server.yaml): retry when one ends, "
                "or raise that limit"
            ) from exc
        except h2.exceptions.ProtocolError as exc:
            raise TunnelClosed(f"tunnel cannot open streams: {exc}") from exc
        self._streams[stream_id] = _Stream()
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        """Server: the target is connected; answer 200. ``StreamError`` if the agent gave up."""
        if stream_id not in self._streams:
            raise StreamError(f"stream {stream_id} was reset by the agent")
        try:
            self._h2.send_headers(stream_id, [(b":status", b"200")])
        except h2.exceptions.ProtocolError as exc:
            self._streams.pop(stream_id, None)
            raise StreamError(f"stream {stream_id} cannot be accepted: {exc}") from exc

    def reject_stream(self, stream_id: int, status: int, reason: str) -> None:
        """Server: answer the CONNECT with an error status and a short reason, then end it."""
        body = reason.encode()[:MAX_REASON]
        headers = [
            (b":status", str(status).encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        try:
            self._h2.send_headers(stream_id, headers)
            self._h2.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.StreamClosedError:
            pass  # the agent gave up first
        self._streams.pop(stream_id, None)

    def send(self, stream_id: int, data: bytes) -> bool:
        """Queue bytes for the stream; False means: pause the source until drained."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.end_requested:
            raise StreamError(f"stream {stream_id} is closed for sending")
        if data:
            if stream.pending is None:
                stream.pending = deque()
            stream.pending.append(data)
            stream.pending_size += len(data)
            self._flush(stream_id, stream, [])
        if stream.pending_size >= HIGH_WATER:
            stream.source_paused = True
            return False
        return True

    def end_stream(self, stream_id: int) -> None:
        """Half-close: no more bytes from us after those queued."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.end_requested:
            return
        stream.end_requested = True
        self._flush(stream_id, stream, [])

    def reset_stream(self, stream_id: int, error_code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """Abort the stream in both directions; queued bytes are discarded."""
        self._waiting.pop(stream_id, None)
        if self._streams.pop(stream_id, None) is None:
            return
        try:
            self._h2.reset_stream(stream_id, error_code=error_code)
        except h2.exceptions.ProtocolError:
            pass  # already closed on the wire

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The consumer has taken ``size`` bytes of the stream: reopen its window."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.unacked += size
        if stream.unacked >= STREAM_WINDOW // 4:
            self._open_stream_window(stream_id, stream)

    def take_finished(self) -> list[int]:
        """Streams that ended cleanly in both directions since the last call."""
        finished, self._finished = self._finished, []
        return finished

    def pending(self, stream_id: int) -> int:
        """Bytes queued for the stream but not yet written."""
        stream = self._streams.get(stream_id)
        return stream.pending_size if stream else 0

    # -- internals ----------------------------------------------------------

    def _open_stream_window(self, stream_id: int, stream: _Stream) -> None:
        increment, stream.unacked = stream.unacked, 0
        try:
            self._h2.increment_flow_control_window(increment, stream_id=stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass  # the peer finished sending; nothing to reopen

    def _flush_all(self, events: list[TunnelEvent]) -> None:
        for stream_id in list(self._waiting):
            stream = self._streams.get(stream_id)
            if stream is None:
                del self._waiting[stream_id]
            else:
                self._flush(stream_id, stream, events)

    def _flush(self, stream_id: int, stream: _Stream, events: list[TunnelEvent]) -> None:
        h2conn = self._h2
        while stream.pending and not self._output_paused:
            window = h2conn.local_flow_control_window(stream_id)
            if window <= 0:
                break
            chunk = stream.pending[0]
            size = min(window, h2conn.max_outbound_frame_size, len(chunk))
            if size < len(chunk):
                view = memoryview(chunk)
                h2conn.send_data(stream_id, view[:size])
                stream.pending[0] = view[size:]
            else:
                h2conn.send_data(stream_id, chunk)
                stream.pending.popleft()
            stream.pending_size -= size
        if stream.pending:
            self._waiting[stream_id] = None
        else:
            stream.pending = None
            self._waiting.pop(stream_id, None)
        if stream.end_requested and not stream.pending and not stream.local_ended:
            stream.local_ended = True
            try:
                h2conn.end_stream(stream_id)
            except h2.exceptions.StreamClosedError:
                stream.remote_ended = True
            if stream.remote_ended:
                del self._streams[stream_id]
                self._finished.append(stream_id)
        if stream.source_paused and stream.pending_size <= LOW_WATER:
            stream.source_paused = False
            events.append(SendBufferDrained(stream_id))

    def _dispatch(self, event: h2.events.Event, events: list[TunnelEvent]) -> None:
        match event:
            case h2.events.DataReceived():
                self._on_data(event, events)
            case h2.events.WindowUpdated(stream_id=stream_id) if stream_id:
                stream = self._streams.get(stream_id)
                if stream is not None and stream_id in self._waiting:
                    self._flush(stream_id, stream, events)
            case h2.events.WindowUpdated() | h2.events.RemoteSettingsChanged():
                self._flush_all(events)
            case h2.events.RequestReceived():
                self._on_request(event, events)
            case h2.events.ResponseReceived():
                self._on_response(event, events)
            case h2.events.StreamEnded():
                self._on_stream_ended(event.stream_id, events)
            case h2.events.StreamReset():
                self._waiting.pop(event.stream_id, None)
                if self._streams.pop(event.stream_id, None) is not None:
                    events.append(StreamReset(event.stream_id, int(event.error_code)))
            case h2.events.PingAckReceived():
                events.append(PingAcknowledged(event.ping_data))
            case h2.events.ConnectionTerminated():
                reason = (event.additional_data or b"").decode(errors="replace")
                code = int(event.error_code) if event.error_code is not None else 0
                events.append(ConnectionTerminated(code, event.last_stream_id or 0, reason))
            case _:
                pass  # settings acks, pings (h2 answers them), priority: nothing to do

    def _on_data(self, event: h2.events.DataReceived, events: list[TunnelEvent]) -> None:
        self._conn_unacked += event.flow_controlled_length
        if self._conn_unacked >= CONNECTION_WINDOW // 2:
            self._h2.increment_flow_control_window(self._conn_unacked)
            self._conn_unacked = 0
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return  # data racing our reset: the connection window is already handed back
        padding = event.flow_controlled_length - len(event.data)
        if stream.rejected_status:
            stream.rejected_body += event.data[: MAX_REASON - len(stream.rejected_body)]
            padding = event.flow_controlled_length
        if padding:
            self.acknowledge(event.stream_id, padding)
        if event.data and not stream.rejected_status:
            events.append(DataReceived(event.stream_id, event.data))

    def _on_request(self, event: h2.events.RequestReceived, events: list[TunnelEvent]) -> None:
        stream_id = event.stream_id
        headers = dict(event.headers or [])
        if self._refusing:
            self._h2.reset_stream(stream_id, error_code=ErrorCodes.REFUSED_STREAM)
            return
        if headers.get(b":method") != b"CONNECT" or b":authority" not in headers:
            self._streams[stream_id] = _Stream()
            self.reject_stream(stream_id, 405, "this is a Fluidity server: only CONNECT is served")
            return
        self._streams[stream_id] = _Stream()
        authority = headers[b":authority"].decode("ascii", errors="replace")
        events.append(StreamRequested(stream_id, authority))

    def _on_response(self, event: h2.events.ResponseReceived, events: list[TunnelEvent]) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        status = int(dict(event.headers or [])[b":status"])
        if 200 <= status < 300:
            events.append(StreamAccepted(event.stream_id))
        else:
            stream.rejected_status = status

    def _close_rejected(self, stream_id: int) -> None:
        # The server ended its side with the refusal; ending ours closes the
        # stream on both peers. Left half-closed it would count against
        # MAX_CONCURRENT_STREAMS for the life of the connection.
        try:
            self._h2.end_stream(stream_id)
        except h2.exceptions.ProtocolError:
            pass  # already closed (reset): nothing to end

    def _on_stream_ended(self, stream_id: int, events: list[TunnelEvent]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.rejected_status:
            del self._streams[stream_id]
            self._close_rejected(stream_id)
            reason = stream.rejected_body.decode(errors="replace").strip()
            events.append(StreamRejected(stream_id, stream.rejected_status, reason))
            return
        stream.remote_ended = True
        events.append(StreamEnded(stream_id))
        if stream.local_ended:
            del self._streams[stream_id]  # both directions are done
            self._finished.append(stream_id)
