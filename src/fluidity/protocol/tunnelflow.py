"""Per-stream records and flow control for one tunnel connection, without I/O.

:class:`FlowControl` keeps the record of every open stream of a
:class:`~fluidity.protocol.tunnel.TunnelProtocol` and decides when bytes move
through the h2 connection it is given. The protocol translates h2 events and
opens, rejects and resets streams on the wire; it adds a record when a stream
opens and forgets it when the stream is rejected or reset. A stream that ended
cleanly in both directions is removed here and reported by ``take_finished``.

Flow control is where the theory lives:

* Inbound, the *connection* window is handed back as soon as bytes arrive, so
  one slow stream never stalls the others; the *stream* window is handed back
  only when the consumer calls ``acknowledge`` -- after it has passed the bytes
  on. A stream therefore never buffers more than its window (``STREAM_WINDOW``)
  in the receiver, and a slow consumer slows exactly its own sender.
* Outbound, ``queue`` keeps bytes per stream and writes as much as the peer's
  windows allow. When a stream's queue passes ``HIGH_WATER`` ``queue`` returns
  False: the caller pauses its source until ``SendBufferDrained``. While the
  driver's transport is congested (``pause``) no DATA is produced, so control
  frames such as PING never queue behind megabytes of payload.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import h2.connection
import h2.exceptions

from fluidity.errors import StreamError
from fluidity.protocol.events import SendBufferDrained, TunnelEvent

STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 64 * 1024 * 1024
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


@dataclass(slots=True)
class StreamRecord:
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


class FlowControl:
    """The open streams of one connection, their outbound queues and their windows."""

    def __init__(self, h2conn: h2.connection.H2Connection) -> None:
        self._h2 = h2conn
        self._streams: dict[int, StreamRecord] = {}
        # Streams holding bytes (or an end) that the windows or a congested
        # transport kept back: the only ones a window update or resume can move.
        # Walking every stream instead costs O(n) per WINDOW_UPDATE.
        self._waiting: dict[int, None] = {}  # an ordered set
        self._conn_unacked = 0
        self._output_paused = False
        self._finished: list[int] = []

    # -- the records --------------------------------------------------------

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, stream_id: int) -> StreamRecord | None:
        """The stream's record; None once it finished, or was rejected or reset."""
        return self._streams.get(stream_id)

    def add(self, stream_id: int) -> None:
        """A stream opened: keep a record for it."""
        self._streams[stream_id] = StreamRecord()

    def forget(self, stream_id: int) -> StreamRecord | None:
        """Drop the stream's record and queued bytes; return the record, if any."""
        self._waiting.pop(stream_id, None)
        return self._streams.pop(stream_id, None)

    def waiting(self) -> list[int]:
        """Streams whose queued bytes (or end) wait for a window or ``resume``."""
        return list(self._waiting)

    def take_finished(self) -> list[int]:
        """Streams that ended cleanly in both directions since the last call."""
        finished, self._finished = self._finished, []
        return finished

    def pending(self, stream_id: int) -> int:
        """Bytes queued for the stream but not yet written."""
        stream = self._streams.get(stream_id)
        return stream.pending_size if stream else 0

    # -- outbound -----------------------------------------------------------

    def queue(self, stream_id: int, data: bytes) -> bool:
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

    def end(self, stream_id: int) -> None:
        """Half-close: no more bytes from us after those queued."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.end_requested:
            return
        stream.end_requested = True
        self._flush(stream_id, stream, [])

    def end_remote(self, stream_id: int, stream: StreamRecord) -> None:
        """The peer ended its direction; the stream is finished if ours ended too."""
        stream.remote_ended = True
        if stream.local_ended:
            del self._streams[stream_id]  # both directions are done
            self._finished.append(stream_id)

    def pause(self) -> None:
        """The transport is congested: produce no more DATA until ``resume``."""
        self._output_paused = True

    def resume(self, events: list[TunnelEvent]) -> None:
        """The transport drained: send what the windows allow."""
        self._output_paused = False
        self.flush_all(events)

    def window_opened(self, stream_id: int, events: list[TunnelEvent]) -> None:
        """The peer widened one stream's window: send what it was waiting for."""
        stream = self._streams.get(stream_id)
        if stream is not None and stream_id in self._waiting:
            self._flush(stream_id, stream, events)

    def flush_all(self, events: list[TunnelEvent]) -> None:
        """Send what every waiting stream's window now allows."""
        for stream_id in list(self._waiting):
            stream = self._streams.get(stream_id)
            if stream is None:
                del self._waiting[stream_id]
            else:
                self._flush(stream_id, stream, events)

    def _flush(self, stream_id: int, stream: StreamRecord, events: list[TunnelEvent]) -> None:
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

    # -- inbound ------------------------------------------------------------

    def received(self, flow_controlled_length: int) -> None:
        """DATA arrived: hand the connection window back once half of it is used."""
        self._conn_unacked += flow_controlled_length
        if self._conn_unacked >= CONNECTION_WINDOW // 2:
            self._h2.increment_flow_control_window(self._conn_unacked)
            self._conn_unacked = 0

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The consumer has taken ``size`` bytes of the stream: reopen its window."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.unacked += size
        if stream.unacked >= STREAM_WINDOW // 4:
            self._open_stream_window(stream_id, stream)

    def _open_stream_window(self, stream_id: int, stream: StreamRecord) -> None:
        increment, stream.unacked = stream.unacked, 0
        try:
            self._h2.increment_flow_control_window(increment, stream_id=stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass  # the peer finished sending; nothing to reopen
