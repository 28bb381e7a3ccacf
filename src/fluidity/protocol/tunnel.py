"""Many CONNECT tunnels over one HTTP/2 connection, without I/O.

``TunnelProtocol`` wraps an ``h2`` connection for either side. Bytes in,
events out, bytes to send::

    events = protocol.receive_data(chunk)   # -> list[TunnelEvent]
    transport.write(protocol.data_to_send())

The agent opens one stream per proxied connection with ``open_stream(authority)``
(an RFC 9113 section 8.5 ``CONNECT``); the server answers with
``accept_stream`` or ``reject_stream``. After that a stream carries raw bytes
both ways.

Flow control (:mod:`~fluidity.protocol.tunnelflow`) is explicit in both
directions. Inbound, a stream's window reopens only when the consumer calls
``acknowledge`` after passing the bytes on, so a slow consumer slows exactly its
own sender. Outbound, ``send`` returns False once a stream's queue passes
``HIGH_WATER``: the caller pauses its source until ``SendBufferDrained``; while
the transport is congested (``pause_output``) no DATA is produced.
"""

from __future__ import annotations

import itertools
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
    StreamAccepted,
    StreamEnded,
    StreamRejected,
    StreamRequested,
    StreamReset,
    TunnelEvent,
)
from fluidity.protocol.h2fast import CountingH2Connection
from fluidity.protocol.tunnelflow import CONNECTION_WINDOW, STREAM_WINDOW, FlowControl

h2patch.apply()

MAX_FRAME_SIZE = 256 * 1024
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
        self._flow = FlowControl(self._h2)
        self._refusing = False
        self._ping_ids = itertools.count(1)
        self._max_streams = max_streams

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
        self._flow.pause()

    def resume_output(self) -> list[TunnelEvent]:
        """The transport drained: send what the windows allow."""
        events: list[TunnelEvent] = []
        self._flow.resume(events)
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
    def stream_limit(self) -> int:
        """The peer's MAX_CONCURRENT_STREAMS: how many streams this side may have open."""
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def open_streams(self) -> int:
        return len(self._flow)

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
        self._flow.add(stream_id)
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        """Server: the target is connected; answer 200. ``StreamError`` if the agent gave up."""
        if self._flow.get(stream_id) is None:
            raise StreamError(f"stream {stream_id} was reset by the agent")
        try:
            self._h2.send_headers(stream_id, [(b":status", b"200")])
        except h2.exceptions.ProtocolError as exc:
            self._flow.forget(stream_id)
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
        self._flow.forget(stream_id)

    def send(self, stream_id: int, data: bytes) -> bool:
        """Queue bytes for the stream; False means: pause the source until drained.

        ``StreamError`` if the stream is gone or was ended for sending.
        """
        return self._flow.queue(stream_id, data)

    def end_stream(self, stream_id: int) -> None:
        """Half-close: no more bytes from us after those queued."""
        self._flow.end(stream_id)

    def reset_stream(self, stream_id: int, error_code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """Abort the stream in both directions; queued bytes are discarded."""
        if self._flow.forget(stream_id) is None:
            return
        try:
            self._h2.reset_stream(stream_id, error_code=error_code)
        except h2.exceptions.ProtocolError:
            pass  # already closed on the wire

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The consumer has taken ``size`` bytes of the stream: reopen its window."""
        self._flow.acknowledge(stream_id, size)

    def take_finished(self) -> list[int]:
        """Streams that ended cleanly in both directions since the last call."""
        return self._flow.take_finished()

    def pending(self, stream_id: int) -> int:
        """Bytes queued for the stream but not yet written."""
        return self._flow.pending(stream_id)

    # -- internals ----------------------------------------------------------

    def _dispatch(self, event: h2.events.Event, events: list[TunnelEvent]) -> None:
        match event:
            case h2.events.DataReceived():
                self._on_data(event, events)
            case h2.events.WindowUpdated(stream_id=stream_id) if stream_id:
                self._flow.window_opened(stream_id, events)
            case h2.events.WindowUpdated() | h2.events.RemoteSettingsChanged():
                self._flow.flush_all(events)
            case h2.events.RequestReceived():
                self._on_request(event, events)
            case h2.events.ResponseReceived():
                self._on_response(event, events)
            case h2.events.StreamEnded():
                self._on_stream_ended(event.stream_id, events)
            case h2.events.StreamReset():
                if self._flow.forget(event.stream_id) is not None:
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
        self._flow.received(event.flow_controlled_length)
        stream = self._flow.get(event.stream_id)
        if stream is None:
            return  # data racing our reset: the connection window is already handed back
        padding = event.flow_controlled_length - len(event.data)
        if stream.rejected_status:
            stream.rejected_body += event.data[: MAX_REASON - len(stream.rejected_body)]
            padding = event.flow_controlled_length
        if padding:
            self._flow.acknowledge(event.stream_id, padding)
        if event.data and not stream.rejected_status:
            events.append(DataReceived(event.stream_id, event.data))

    def _on_request(self, event: h2.events.RequestReceived, events: list[TunnelEvent]) -> None:
        stream_id = event.stream_id
        headers = dict(event.headers or [])
        if self._refusing:
            self._h2.reset_stream(stream_id, error_code=ErrorCodes.REFUSED_STREAM)
            return
        if headers.get(b":method") != b"CONNECT" or b":authority" not in headers:
            self._flow.add(stream_id)
            self.reject_stream(stream_id, 405, "this is a Fluidity server: only CONNECT is served")
            return
        self._flow.add(stream_id)
        authority = headers[b":authority"].decode("ascii", errors="replace")
        events.append(StreamRequested(stream_id, authority))

    def _on_response(self, event: h2.events.ResponseReceived, events: list[TunnelEvent]) -> None:
        stream = self._flow.get(event.stream_id)
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
        stream = self._flow.get(stream_id)
        if stream is None:
            return
        if stream.rejected_status:
            self._flow.forget(stream_id)
            self._close_rejected(stream_id)
            reason = stream.rejected_body.decode(errors="replace").strip()
            events.append(StreamRejected(stream_id, stream.rejected_status, reason))
            return
        events.append(StreamEnded(stream_id))
        self._flow.end_remote(stream_id, stream)
