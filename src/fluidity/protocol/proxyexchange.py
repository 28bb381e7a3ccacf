"""One forwarded HTTP exchange over one upstream: framing, response end, replay. Sans-I/O.

:class:`Upstream` is a tunnel stream as the proxy core sees it. The head the target
receives is the client's own (:func:`httpwire.serialise_request_head`), its body goes
in the framing the client chose (chunks re-framed, trailers kept), and the response
reaches the client as the raw bytes the origin sent: a
:class:`~fluidity.protocol.http1frame.ResponseFramer` only says where it ends (HEAD,
204/304, 1xx, Content-Length, chunked, close-delimited, 101).

:class:`Exchange` is one request and its response, or one CONNECT: it returns the bytes
to send and keeps a copy of what went upstream while the request may still be replayed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fluidity.protocol import http1frame, httpwire
from fluidity.protocol.http1frame import Progress, ResponseFramer
from fluidity.protocol.httpwire import ForwardTarget, RequestHead

__all__ = ["MAX_REPLAY_BYTES", "Exchange", "Progress", "Upstream"]

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
MAX_REPLAY_BYTES = 64 * 1024


@dataclass(eq=False)
class Upstream:
    """One tunnel stream as the session holds it: where it goes, and whether it may
    carry another request."""

    target: ForwardTarget
    open: bool = False
    eof: bool = False
    spoiled: bool = False  # EOF or stray bytes seen: never reuse
    persistent: bool = False  # the last response ended and both sides keep the connection
    # Every request on it was sent in full and every response read to its end: closing
    # it now cuts nothing. False for a CONNECT or an upgraded upstream.
    at_rest: bool = False

    def reusable_for(self, target: ForwardTarget) -> bool:
        """Whether the next request, to ``target``, may go over this upstream."""
        same = (self.target.host, self.target.port) == (target.host, target.port)
        return same and self.open and not self.spoiled and self.persistent

    @property
    def authority(self) -> str:
        host, port = self.target.host, self.target.port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Exchange:
    """One request and its response (``kind="forward"``), or one CONNECT."""

    def __init__(self, request: RequestHead, target: ForwardTarget, kind: str) -> None:
        self.request = request
        self.target = target
        self.kind = kind
        self.request_complete = kind == "connect"
        self.response_started = False
        self.reused_upstream = False
        self.retried = False
        self.pending_replay: bytes | None = None
        self._headers = request.headers
        self._framer: ResponseFramer | None = None
        self._up: Upstream | None = None
        self._chunked = bool(httpwire.header_tokens(self._headers, b"transfer-encoding"))
        forward = kind == "forward"
        self._replay: list[bytes] | None = (
            [] if forward and request.method in IDEMPOTENT_METHODS else None
        )
        self._replay_size = 0

    @property
    def head(self) -> bytes:
        """The request head as the target receives it: origin-form, headers as sent."""
        request = self.request
        return httpwire.serialise_request_head(
            request.method, self.target.origin_target, request.http_version, self._headers
        )

    def start(self, up: Upstream) -> bytes:
        """Begin the exchange on ``up``; return the head to send."""
        assert self.kind == "forward", "a CONNECT is not forwarded"
        self._new_framer(up)
        head = self.head
        self._remember(head)
        return head

    def _new_framer(self, up: Upstream) -> None:
        up.persistent = False
        up.at_rest = False
        self._up = up
        self._framer = ResponseFramer(self.request.method, upgrade=self.request.upgrade)

    def body(self, data: bytes) -> bytes:
        """The wire bytes for a piece of the request body."""
        wire = http1frame.chunk(data) if self._chunked else data
        self._remember(wire)
        return wire

    def end(self, trailers: Sequence[httpwire.Header]) -> bytes:
        """The wire bytes that end the request body (the last chunk, with trailers)."""
        self.request_complete = True
        self._settle()
        wire = http1frame.last_chunk(trailers) if self._chunked else b""
        self._remember(wire)
        return wire

    def response(self, up: Upstream, data: bytes) -> tuple[bytes, Progress]:
        """Feed upstream bytes (``b""`` = EOF): the bytes for the client, and how far it got.

        The client gets the origin's bytes as they are, in order, as soon as they are
        known to be part of the response: a response head goes out once it is
        complete (so a broken or missing head is answered with a clean 502, and the
        request stays replayable), the body as it comes. What lies beyond the end of
        the response is garbage from the origin: dropped, and the upstream spoiled.
        After a 101 everything is raw. Raises ``ResponseBroken`` when the response is
        broken or cut short.
        """
        framer = self._framer
        assert framer is not None, "response() before start()"
        up.eof = up.eof or not data
        up.spoiled = up.spoiled or up.eof
        ready, beyond = framer.feed(data)
        progress = framer.progress
        if progress is Progress.ENDED:
            up.spoiled = up.spoiled or bool(beyond)
            up.persistent = framer.keep_alive
            self._settle()
        if ready:
            self.response_started = True
            self._forget()
        return ready, progress

    def _settle(self) -> None:
        """Mark the upstream at rest once both the request and its response are complete."""
        framer, up = self._framer, self._up
        if up is not None and framer is not None and framer.progress is Progress.ENDED:
            up.at_rest = self.request_complete

    def client_may_continue(self, up: Upstream) -> bool:
        """After the response: may the client connection carry another request?

        Not if the answer came before the request body ended (the rest of that body
        would have nowhere to go), nor when either side ended persistence. A response
        that ended at the upstream's EOF was close-delimited: the client too must see
        the end as a close.
        """
        keeps = httpwire.client_keeps_alive(self.request)
        return self.request_complete and up.persistent and keeps and not up.eof

    def replayable(self) -> bytes | None:
        """The whole request as sent, if it may be sent once more (see the session)."""
        if self._replay is None or self.retried or not self.request_complete:
            return None
        return None if self.response_started else b"".join(self._replay)

    def restart(self, up: Upstream) -> bytes:
        """Begin the exchange again on a fresh upstream; return the bytes to replay."""
        replay = self.replayable()
        assert replay is not None
        self.retried = True
        # A partial response head held back from the lost upstream is its own, not
        # the new one's: sending it would glue two responses together (found by
        # fuzzing, tests/fuzz). A fresh framer holds nothing.
        self._new_framer(up)
        return replay

    def _remember(self, data: bytes) -> None:
        if self._replay is None:
            return
        self._replay_size += len(data)
        if self._replay_size > MAX_REPLAY_BYTES:
            self._forget()
            return
        self._replay.append(data)

    def _forget(self) -> None:
        self._replay = None
