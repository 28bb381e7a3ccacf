"""One byte stream carried in a WebSocket's binary messages, without I/O.

The WebSocket transport needs a WebSocket for one thing only: to look like an
ordinary HTTP/1.1 WebSocket to whatever sits in the path (a TLS-inspecting
proxy, a load balancer) while carrying an opaque byte stream -- the inner TLS
1.3 connection -- in its binary messages. Message boundaries mean nothing:
a proxy may split or re-frame messages, and the stream reads the same.

``WebSocketChannel`` wraps the sans-I/O ``websockets`` protocol (it does the
framing, masking, the opening and closing handshakes, and answers pings) and
speaks our vocabulary. Bytes in, events out, bytes to send::

    events = channel.receive_data(chunk)   # -> list[ChannelEvent]
    transport.write(channel.data_to_send())
    if channel.wants_eof: transport.close()

The server side answers the upgrade itself: the configured path gets a 101,
any other path a 404, a request that is not an upgrade a 426.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, SEND_EOF
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

# One binary message never carries more than this; larger writes are split.
MAX_MESSAGE = 256 * 1024
# What we accept from the peer in one message: generous, since an intermediary
# may join frames, yet bounded, since the peer is not authenticated yet.
MAX_RECEIVED_MESSAGE = 16 * 1024 * 1024
USER_AGENT = "fluidity"

# websockets narrates every open and close at INFO; the link logs its own line.
_WS_LOG = logging.getLogger("fluidity.websockets")
_WS_LOG.setLevel(logging.WARNING)


@dataclass(frozen=True)
class ChannelOpened:
    """The upgrade succeeded; ``headers`` are the request's (server) or response's (client)."""

    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ChannelRefused:
    """The upgrade failed: the answer's ``status`` (0 if there was no valid answer)
    and why. The server side has already queued its error answer."""

    status: int
    reason: str


@dataclass(frozen=True)
class BytesReceived:
    """The next bytes of the stream (a binary message or a fragment of one)."""

    data: bytes


@dataclass(frozen=True)
class PongReceived:
    """The peer (or a proxy in between) answered a ping."""

    payload: bytes


@dataclass(frozen=True)
class ChannelClosed:
    """The WebSocket is closed (close frame, end of connection or protocol error)."""

    code: int
    reason: str


ChannelEvent = ChannelOpened | ChannelRefused | BytesReceived | PongReceived | ChannelClosed


class WebSocketChannel:
    """A byte stream over one WebSocket connection, client or server side."""

    def __init__(self, protocol: ClientProtocol | ServerProtocol, path: str) -> None:
        self._ws = protocol
        self._path = path
        self._out: list[bytes] = []
        self._closed = False
        self.wants_eof = False
        """True once the connection should be closed after ``data_to_send`` is written."""

    @classmethod
    def client(cls, *, host: str, port: int, path: str, secure: bool) -> WebSocketChannel:
        """The agent's side; the upgrade request is queued at once."""
        scheme = "wss" if secure else "ws"
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        protocol = ClientProtocol(
            parse_uri(f"{scheme}://{authority}{path}"),
            max_size=MAX_RECEIVED_MESSAGE,
            logger=_WS_LOG,
        )
        channel = cls(protocol, path)
        request = protocol.connect()
        request.headers["User-Agent"] = USER_AGENT
        protocol.send_request(request)
        return channel

    @classmethod
    def server(cls, *, path: str) -> WebSocketChannel:
        """The server's side; it answers the upgrade request when it arrives."""
        return cls(ServerProtocol(max_size=MAX_RECEIVED_MESSAGE, logger=_WS_LOG), path)

    @property
    def is_open(self) -> bool:
        return self._ws.state is OPEN

    # -- bytes in, events out ---------------------------------------------

    def receive_data(self, data: bytes) -> list[ChannelEvent]:
        """Feed bytes from the network; return what they meant."""
        if self._closed:
            return []
        self._ws.receive_data(data)
        return self._events()

    def receive_eof(self) -> list[ChannelEvent]:
        """The network connection ended."""
        if self._closed:
            return []
        self._ws.receive_eof()
        return [*self._events(), *self._closed_event()]

    # -- commands ---------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        """Queue the next bytes of the stream, as binary messages of at most ``MAX_MESSAGE``."""
        view = memoryview(data)
        for start in range(0, len(view), MAX_MESSAGE):
            self._ws.send_binary(view[start : start + MAX_MESSAGE])

    def ping(self, payload: bytes) -> None:
        """Queue a ping; the answer arrives as ``PongReceived``."""
        self._ws.send_ping(payload)

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (nothing more may be sent)."""
        if self._ws.state is OPEN:
            self._ws.send_close(code, reason)

    def data_to_send(self) -> bytes:
        """The bytes to write to the network now; sets ``wants_eof`` when the
        connection should be closed after them."""
        chunks = [*self._out, *self._ws.data_to_send()]
        self._out.clear()
        if SEND_EOF in chunks:
            self.wants_eof = True
        return b"".join(chunks)

    # -- internals --------------------------------------------------------

    def _events(self) -> list[ChannelEvent]:
        events: list[ChannelEvent] = []
        for item in self._ws.events_received():
            match item:
                case Request():
                    events.append(self._answer(item))
                case Response():
                    events.append(self._on_response(item))
                case Frame():
                    events.extend(self._on_frame(item))
        if self._ws.handshake_exc is not None and not any(
            isinstance(e, ChannelRefused) for e in events
        ):
            events.append(ChannelRefused(0, f"not a WebSocket answer: {self._ws.handshake_exc}"))
        if self._ws.parser_exc is not None:
            events.extend(self._closed_event())
        return events

    def _answer(self, request: Request) -> ChannelOpened | ChannelRefused:
        assert isinstance(self._ws, ServerProtocol)
        if request.path.partition("?")[0] != self._path:
            response = self._ws.reject(404, "fluidity: no WebSocket endpoint at this path\n")
        else:
            response = self._ws.accept(request)
        self._ws.send_response(response)
        if response.status_code == 101:
            return ChannelOpened(_pairs(request.headers))
        self._closed = True
        return ChannelRefused(response.status_code, f"{request.path}: {response.reason_phrase}")

    def _on_response(self, response: Response) -> ChannelOpened | ChannelRefused:
        error = self._ws.handshake_exc
        if error is None:
            return ChannelOpened(_pairs(response.headers))
        self._closed = True
        if isinstance(error, InvalidStatus):
            body = (response.body or b"")[:200].decode("utf-8", "replace").strip()
            detail = f": {body}" if body else ""
            return ChannelRefused(response.status_code, f"{response.reason_phrase}{detail}")
        return ChannelRefused(response.status_code, str(error))

    def _on_frame(self, frame: Frame) -> list[ChannelEvent]:
        match frame.opcode:
            case Opcode.BINARY | Opcode.CONT:
                return [BytesReceived(bytes(frame.data))] if frame.data else []
            case Opcode.TEXT:
                reason = "fluidity carries binary messages only"
                self._ws.fail(CloseCode.UNSUPPORTED_DATA, reason)
                self._closed = True
                return [ChannelClosed(CloseCode.UNSUPPORTED_DATA, reason)]
            case Opcode.PONG:
                return [PongReceived(bytes(frame.data))]
            case Opcode.CLOSE:
                return self._closed_event()
        return []  # PING: websockets has queued the pong

    def _closed_event(self) -> list[ChannelEvent]:
        """The one ``ChannelClosed``: the peer's close frame, else the end of the
        connection, else the close we sent on a protocol error."""
        if self._closed:
            return []
        self._closed = True
        received, sent, error = self._ws.close_rcvd, self._ws.close_sent, self._ws.parser_exc
        if received is not None:
            return [ChannelClosed(received.code, received.reason)]
        if error is None or isinstance(error, EOFError):
            return [ChannelClosed(CloseCode.ABNORMAL_CLOSURE, "the connection ended")]
        code = sent.code if sent is not None else CloseCode.PROTOCOL_ERROR
        return [ChannelClosed(code, str(error))]


def _pairs(headers: Headers) -> tuple[tuple[str, str], ...]:
    return tuple(headers.raw_items())
