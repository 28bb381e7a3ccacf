"""One forwarded HTTP exchange over one upstream: framing, response end, replay. Sans-I/O.

:class:`Upstream` is a tunnel stream as the proxy core sees it: where it goes and a
client-role h11 connection that tracks its framing. h11's bytes are never sent: the
head the target receives is the client's own (:func:`httpwire.serialise_request_head`),
and the response reaches the client as the raw bytes the origin sent. h11 answers two
questions only: what the request body looks like on the wire (it re-frames chunked
bodies and writes trailers), and where the response ends (HEAD, 204/304, 1xx,
Content-Length, chunked, close-delimited, 101).

:class:`Exchange` is one request and its response, or one CONNECT: it returns the bytes
to send and keeps a copy of what went upstream while the request may still be replayed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import h11

from fluidity.protocol import httpwire
from fluidity.protocol.httpwire import ForwardTarget

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
MAX_REPLAY_BYTES = 64 * 1024
MAX_RESPONSE_HEAD = 1024 * 1024  # h11's bound on an incomplete response event

BodyEvent = h11.Data | h11.EndOfMessage

# h11 states after a complete exchange: kept alive (DONE) or not (MUST_CLOSE, CLOSED).
_AT_REST = frozenset({h11.DONE, h11.MUST_CLOSE, h11.CLOSED})


class Progress(enum.Enum):
    """How far a response got with the bytes just fed."""

    MORE = "the response goes on"
    ENDED = "the response ended"
    SWITCHED = "the origin switched protocols (101): raw bytes from here"


def _framing_connection() -> h11.Connection:
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)


@dataclass(eq=False)
class Upstream:
    """One tunnel stream and the client-role h11 connection that tracks its framing."""

    target: ForwardTarget
    open: bool = False
    eof: bool = False
    spoiled: bool = False  # EOF or stray bytes seen: never reuse
    _conn: h11.Connection | None = field(default=None, repr=False)

    @property
    def conn(self) -> h11.Connection:
        """The framing connection, made on first use: a CONNECT upstream never needs
        one, and each costs about 1 KB per idle tunnel."""
        if self._conn is None:
            self._conn = _framing_connection()
        return self._conn

    def reusable_for(self, target: ForwardTarget) -> bool:
        """Whether the next request, to ``target``, may go over this upstream."""
        same = (self.target.host, self.target.port) == (target.host, target.port)
        return same and self.open and not self.spoiled and self.both_done()

    @property
    def at_rest(self) -> bool:
        """Every request on it was sent in full and every response read to its end:
        closing it now cuts nothing. False for a CONNECT or an upgraded upstream."""
        conn = self._conn
        if conn is None:
            return False
        return conn.our_state in _AT_REST and conn.their_state in _AT_REST

    def both_done(self) -> bool:
        # DONE on both sides unless a Connection: close, an HTTP/1.0 response or a
        # close-delimited body ended persistence (h11 then says MUST_CLOSE / CLOSED).
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    @property
    def authority(self) -> str:
        host, port = self.target.host, self.target.port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Exchange:
    """One request and its response (``kind="forward"``), or one CONNECT."""

    def __init__(self, request: h11.Request, target: ForwardTarget, kind: str) -> None:
        self.request = request
        self.target = target
        self.kind = kind
        self.request_complete = kind == "connect"
        self.response_started = False
        self.reused_upstream = False
        self.retried = False
        self.pending_replay: bytes | None = None
        self._held = b""  # response bytes h11 has not consumed yet (an incomplete head)
        forward = kind == "forward"
        self._framing = httpwire.framing_request(request, target) if forward else None
        self._replay: list[bytes] | None = (
            [] if forward and request.method in IDEMPOTENT_METHODS else None
        )
        self._replay_events: list[BodyEvent] = []
        self._replay_size = 0

    @property
    def head(self) -> bytes:
        """The request head as the target receives it: origin-form, headers as sent."""
        request = self.request
        return httpwire.serialise_request_head(
            request.method, self.target.origin_target, request.http_version,
            request.headers.raw_items(),
        )  # fmt: skip

    def start(self, up: Upstream) -> bytes:
        """Tell ``up``'s h11 about the request; return the head to send."""
        assert self._framing is not None, "a CONNECT is not forwarded"
        up.conn.send(self._framing)
        head = self.head
        self._remember(head)
        return head

    def body(self, up: Upstream, event: BodyEvent) -> bytes:
        """The wire bytes for a piece of the request body (or its end, with trailers)."""
        data = up.conn.send(event)
        self._remember(data, event)
        if isinstance(event, h11.EndOfMessage):
            self.request_complete = True
        return data

    def response(self, up: Upstream, data: bytes) -> tuple[bytes, Progress]:
        """Feed upstream bytes (``b""`` = EOF): the bytes for the client, and how far it got.

        The client gets the origin's bytes as they are, in order, as soon as h11 has
        consumed them: a response head goes out once it is complete (so a broken or
        missing head is answered with a clean 502, and the request stays replayable),
        the body as it comes. What lies beyond the end of the response is garbage from
        the origin: dropped, and the upstream spoiled. After a 101 everything is raw.
        Raises ``h11.RemoteProtocolError`` when the response is broken or cut short.
        """
        up.eof = up.eof or not data
        up.spoiled = up.spoiled or up.eof
        fed = self._held + data
        end = httpwire.read_response(up.conn, data)
        if end is h11.PAUSED:
            self._held = b""
            return self._sent(fed), Progress.SWITCHED
        unconsumed = len(up.conn.trailing_data[0])
        ready, self._held = fed[: len(fed) - unconsumed], fed[len(fed) - unconsumed :]
        if end is h11.EndOfMessage:
            up.spoiled = up.spoiled or bool(self._held)
            self._held = b""
            return self._sent(ready), Progress.ENDED
        return self._sent(ready), Progress.MORE

    def _sent(self, data: bytes) -> bytes:
        if data:
            self.response_started = True
            self._forget()
        return data

    def client_may_continue(self, up: Upstream) -> bool:
        """After the response: may the client connection carry another request?

        Not if the answer came before the request body ended (the rest of that body
        would have nowhere to go), nor when either side ended persistence. A response
        that ended at the upstream's EOF was close-delimited: the client too must see
        the end as a close.
        """
        keeps = httpwire.client_keeps_alive(self.request)
        return self.request_complete and up.both_done() and keeps and not up.eof

    def replayable(self) -> bytes | None:
        """The whole request as sent, if it may be sent once more (see the session)."""
        if self._replay is None or self.retried or not self.request_complete:
            return None
        return None if self.response_started else b"".join(self._replay)

    def restart(self, up: Upstream) -> bytes:
        """Bring a fresh upstream's h11 to "request sent"; return the bytes to replay."""
        replay = self.replayable()
        assert replay is not None and self._framing is not None
        self.retried = True
        # A partial response head held back from the lost upstream is its own, not
        # the new one's: sending it would glue two responses together (found by
        # fuzzing, tests/fuzz).
        self._held = b""
        for event in (self._framing, *self._replay_events):
            up.conn.send(event)
        return replay

    def _remember(self, data: bytes, event: BodyEvent | None = None) -> None:
        if self._replay is None:
            return
        self._replay_size += len(data)
        if self._replay_size > MAX_REPLAY_BYTES:
            self._forget()
            return
        self._replay.append(data)
        if event is not None:
            self._replay_events.append(event)

    def _forget(self) -> None:
        self._replay = None
        self._replay_events = []
