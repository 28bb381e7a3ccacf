"""The agent's HTTP/1.1 proxy core, sans-I/O: one :class:`ClientSession` per client connection.

The driver feeds a session the client's bytes (``receive_client``) and the upstream's
(``receive_upstream``; an upstream is a tunnel stream to ``host:port`` that behaves
like a TCP connection to the target), reports the fate of each upstream it was asked
to open, and carries out, in order, the events (:mod:`~fluidity.protocol.proxyevents`)
it takes with ``next_event()`` or ``events()``. Nothing is dropped or reordered:
client bytes that arrive while an upstream opens are kept and released after it.

- ``CONNECT host:port``: ``OpenUpstream(kind="connect")``, ``200 Connection
  established``, then raw splicing with half-closes until both directions ended.
- Absolute-form requests, any method: ``OpenUpstream(kind="forward")``, the request
  rewritten to origin-form with the client's headers untouched except the proxy-only
  ones, bodies streamed both ways. Responses are forwarded as the raw bytes received;
  a client-role h11 connection only tells where each ends, so one client connection
  carries many requests, to several hosts, reusing the upstream when the target
  repeats. A ``101`` answer to an ``Upgrade`` request turns the session raw.
- Origin-form requests for a path the driver registered are answered by its
  handler; any other origin-form request gets 400.

The states, and what moves a session between them::

    IDLE        head parsed -> OPENING (OpenUpstream) | FORWARDING (upstream reused)
                            -> IDLE (answered locally) | CLOSED (refused: 4xx/5xx)
    OPENING     upstream_opened() -> RAW (CONNECT) | FORWARDING;  upstream_failed() -> CLOSED
    FORWARDING  response ended -> IDLE (keep-alive) | CLOSED;  101 -> RAW
                retry_upstream() -> OPENING;  upstream_lost() -> CLOSED
    RAW         both directions ended, or upstream_lost() -> CLOSED
    CLOSED      final: CloseClient() was the last event

Before ``CloseClient`` any upstream still held gets ``CloseUpstream``, except one the
driver reported lost or one whose both directions ended. The agent's own errors are
``text/plain`` lines saying what was wrong and how to fix it, with ``Connection:
close``. A ``Proxy-Authorization`` value never appears in any message.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import h11

from fluidity.errors import ProxyProtocolError
from fluidity.protocol import httpwire
from fluidity.protocol.authority import parse_authority
from fluidity.protocol.httpwire import ForwardTarget
from fluidity.protocol.proxyevents import (
    CloseClient,
    CloseUpstream,
    EndClient,
    EndUpstream,
    LocalHandler,
    LocalRequest,
    LocalResponse,
    OpenUpstream,
    ProxyEvent,
    ProxyStateError,
    SendClient,
    SendUpstream,
    State,
    local_request,
    require_state,
)
from fluidity.protocol.proxyexchange import BodyEvent, Exchange, Progress, Upstream

__all__ = [
    "ClientSession",
    "CloseClient",
    "CloseUpstream",
    "EndClient",
    "EndUpstream",
    "LocalHandler",
    "LocalRequest",
    "LocalResponse",
    "OpenUpstream",
    "ProxyEvent",
    "ProxyStateError",
    "SendClient",
    "SendUpstream",
    "State",
    "parse_authority",
]


_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_REALM = [(b"Proxy-Authenticate", b'Basic realm="fluidity"')]


class ClientSession:
    """The proxy side of one client connection; see the module docstring.

    ``credentials`` (user, password) makes every CONNECT and forward request require
    ``Proxy-Authorization: Basic`` (else 407). ``local_paths`` maps origin-form paths
    (no query) to handlers (kept, not copied: share one mapping between sessions);
    these need no credentials (the handler sees
    ``LocalRequest.authenticated``) and may raise ``ProxyProtocolError(message,
    status)`` to answer an error. ``max_head_size`` bounds a request head (431 beyond
    it) and the client bytes kept behind the current exchange (:attr:`wants_client_data`).
    """

    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        local_paths: Mapping[str, LocalHandler] = MappingProxyType({}),
        max_head_size: int = 65536,
    ) -> None:
        self._expected = None if credentials is None else ":".join(credentials).encode()
        self._local_paths = local_paths
        self._max_head = max_head_size
        # A list, not a deque: a session holds a few events at a time, and an
        # empty deque costs ~600 bytes per idle client connection.
        self._events: list[ProxyEvent] = []
        self._state = State.IDLE
        self._inbox = bytearray()  # client bytes not yet given to the request parser
        self._client_eof = False
        self._raw_ended = {"client": False, "upstream": False}
        self._exchange: Exchange | None = None
        self._upstream: Upstream | None = None
        self._served = 0  # exchanges finished on this connection
        self._parser_conn: h11.Connection | None = self._new_parser()

    # -- what the driver reads ------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def idle(self) -> bool:
        """Waiting for a request head (IDLE): nothing is under way on the connection."""
        return self._state is State.IDLE

    @property
    def response_started(self) -> bool:
        """Whether a response byte of the current exchange went to the client."""
        return self._exchange is not None and self._exchange.response_started

    @property
    def request_complete(self) -> bool:
        """Whether the current request, head and body, has been received in full."""
        return self._exchange is not None and self._exchange.request_complete

    @property
    def wants_client_data(self) -> bool:
        """Whether to read the client now; False while opening or with a full buffer."""
        open_states = (State.IDLE, State.FORWARDING, State.RAW)
        return self._state in open_states and len(self._inbox) < self._max_head

    @property
    def relaying(self) -> bool:
        """Whether the session is RAW: it would hand client bytes back as one
        ``SendUpstream`` and upstream bytes as one ``SendClient``, so the driver
        may move them itself and call the session only for ends (``b""``)."""
        return self._state is State.RAW

    def next_event(self) -> ProxyEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.pop(0) if self._events else None

    def events(self) -> list[ProxyEvent]:
        """Every event not yet taken, oldest first."""
        taken, self._events = self._events, []
        return taken

    def replayable_request(self) -> bytes | None:
        """The rewritten request, if it may be sent once more on a new upstream.

        Only for an idempotent method (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), a
        request received in full and at most 64 KiB, no response byte sent to the
        client, and no retry yet.
        """
        return None if self._exchange is None else self._exchange.replayable()

    # -- what the driver reports ----------------------------------------------------

    def receive_client(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` is its EOF. Ignored once CLOSED."""
        if self._state is State.CLOSED:
            return
        if self._client_eof:
            if data:
                raise ProxyStateError("receive_client() got bytes after the client's EOF")
            return
        if self._state is State.RAW:
            self._relay_client(data)
            return
        self._inbox += data
        self._client_eof = not data
        self._pump_client()

    def receive_upstream(self, data: bytes) -> None:
        """Bytes from the open upstream; ``b""`` is its EOF. Ignored when none is open."""
        up = self._upstream
        if self._state is State.CLOSED or up is None or not up.open:
            return
        if self._state is State.RAW:
            self._relay_upstream(data)
        elif self._state is State.FORWARDING:
            self._receive_response(up, data)
        else:  # an idle kept-alive upstream closed or spoke out of turn: drop it
            self._drop_upstream()

    def upstream_opened(self) -> None:
        """The upstream asked for by the last ``OpenUpstream`` is open. OPENING only."""
        self._require("upstream_opened")
        up, ex = self._current()
        up.open = True
        if ex.kind == "connect":
            self._emit(SendClient(_ESTABLISHED))
            self._go_raw()
            return
        self._state = State.FORWARDING
        if ex.pending_replay is not None:
            self._emit(SendUpstream(ex.pending_replay))
            ex.pending_replay = None
        else:
            self._emit(SendUpstream(ex.start(up)))
        self._pump_client()

    def upstream_failed(self, status: int, reason: str) -> None:
        """The upstream could not be opened: answer ``status`` and ``reason``. OPENING only."""
        self._require("upstream_failed")
        self._upstream = None
        self._refuse(status, reason)

    def upstream_lost(self, reason: str) -> None:
        """The open upstream broke: 502 if no response byte went out, else an abort.

        A no-op when no upstream is held (an idle kept-alive one is just forgotten).
        """
        up, self._upstream = self._upstream, None
        if up is None or self._state in (State.IDLE, State.CLOSED):
            return
        if self._state is State.RAW:
            self._close(abort=True)
        else:
            self._fail(502, f"the tunnel stream to {up.authority} broke: {reason}")

    def retry_upstream(self) -> None:
        """Instead of ``upstream_lost()``: forget the broken upstream, send the request anew.

        Legal while :meth:`replayable_request` is not None. Emits ``OpenUpstream``;
        after ``upstream_opened()``, ``SendUpstream`` with the whole request.
        """
        self._require("retry_upstream")
        if self.replayable_request() is None:
            raise ProxyStateError(
                "retry_upstream(): this request cannot be replayed (replayable_request() "
                "is None); call upstream_lost() instead"
            )
        self._upstream = None
        self._retry()

    def head_timed_out(self) -> None:
        """The wait for a request head ran out (the driver's ``head_timeout``). IDLE only.

        A head begun but not finished, or a first request that never came, gets 408.
        A kept-alive connection that sent no byte of its next request is closed
        quietly: it was merely idle (RFC 9112 section 9.5). A no-op in other states.
        """
        if self._state is not State.IDLE:
            return
        if self._served and not self._head_started and not self._inbox:
            self._close()
        else:
            self._refuse(408, "no complete request head arrived in time: send requests promptly")

    # -- the client side: requests ----------------------------------------------------

    @property
    def _parser(self) -> h11.Connection:
        """The request parser; gone once the session is raw (it never parses again)."""
        if self._parser_conn is None:
            raise ProxyStateError("a raw session parses no requests")
        return self._parser_conn

    def _new_parser(self) -> h11.Connection:
        self._eof_fed = False
        self._head_started = False
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)

    def _parsing_client(self) -> bool:
        if self._state is State.IDLE:
            return True
        return self._state is State.FORWARDING and not self.request_complete

    def _pump_client(self) -> None:
        try:
            while self._parsing_client():
                self._feed_parser()
                event = self._parser.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                self._on_client_event(event)
        except h11.RemoteProtocolError as exc:
            self._fail(exc.error_status_hint, httpwire.client_error_text(exc, self._max_head))

    def _feed_parser(self) -> None:
        if not self._head_started:  # RFC 9112 §2.2: skip empty lines before a request
            del self._inbox[: len(self._inbox) - len(self._inbox.lstrip(b"\r\n"))]
        if self._inbox:
            self._head_started = True
            self._parser.receive_data(bytes(self._inbox))
            self._inbox.clear()
        if self._client_eof and not self._eof_fed:
            self._eof_fed = True
            self._parser.receive_data(b"")

    def _on_client_event(self, event: object) -> None:
        match event:
            case h11.Request():
                try:
                    self._route(event)
                except ProxyProtocolError as exc:
                    self._refuse(exc.status, str(exc))
            case h11.Data():
                self._forward_body(h11.Data(data=bytes(event.data)))
            case h11.EndOfMessage():
                self._forward_body(h11.EndOfMessage(headers=event.headers.raw_items()))
            case h11.ConnectionClosed():
                self._close()

    def _route(self, request: h11.Request) -> None:
        if request.http_version not in (b"1.0", b"1.1"):
            version = request.http_version.decode()
            raise ProxyProtocolError(f"HTTP/{version} is not supported: speak HTTP/1.1", 505)
        httpwire.check_head(request, self._max_head)
        if request.target.startswith(b"/") or request.target == b"*":
            self._answer_locally(request)
            return
        httpwire.require_credentials(request.headers.raw_items(), self._expected)
        if request.method == b"CONNECT":
            self._open_tunnel(request, *httpwire.parse_connect_target(request.target))
        else:
            self._begin_forward(
                request, httpwire.parse_absolute_target(request.method, request.target)
            )

    def _answer_locally(self, request: h11.Request) -> None:
        handler = self._local_paths.get(request.target.partition(b"?")[0].decode("latin-1"))
        if handler is None:
            raise ProxyProtocolError("this is a proxy: send absolute-form requests or CONNECT")
        raw = request.headers.raw_items()
        authenticated = self._expected is None or httpwire.credentials_match(raw, self._expected)
        answer = handler(
            local_request(request.method, request.target, raw, authenticated=authenticated)
        )
        # A local request with a body is answered, and the connection closed unread.
        ended = isinstance(self._parser.next_event(), h11.EndOfMessage)
        keep = ended and httpwire.client_keeps_alive(request)
        self._emit(SendClient(answer.encode(head_only=request.method == b"HEAD", keep_alive=keep)))
        if keep:
            self._next_request()
        else:
            self._close()

    def _open_tunnel(self, request: h11.Request, host: str, port: int) -> None:
        if httpwire.has_body(request.headers.raw_items()):
            raise ProxyProtocolError("a CONNECT request carries no body: send the head alone")
        self._parser.next_event()  # the EndOfMessage of a bodiless request
        self._take_pipelined()  # what follows the head is tunnel data
        target = ForwardTarget(host, port, b"")
        self._exchange = Exchange(request, target, "connect")
        self._open_upstream(target, "connect")

    def _take_pipelined(self) -> None:
        """After a request's end, what the parser holds beyond it goes back to the inbox."""
        self._inbox[:0] = self._parser.trailing_data[0]

    def _next_request(self) -> None:
        self._served += 1
        self._take_pipelined()
        self._exchange = None
        self._state = State.IDLE
        self._parser_conn = self._new_parser()

    # -- forwarding one request ---------------------------------------------------------

    def _begin_forward(self, request: h11.Request, target: ForwardTarget) -> None:
        ex = self._exchange = Exchange(request, target, "forward")
        up = self._upstream
        if up is not None and up.reusable_for(target):
            up.conn.start_next_cycle()
            ex.reused_upstream = True
            self._state = State.FORWARDING
            self._emit(SendUpstream(ex.start(up)))
        else:
            self._open_upstream(target, "forward")

    def _open_upstream(self, target: ForwardTarget, kind: str) -> None:
        if self._upstream is not None:
            self._drop_upstream()
        self._upstream = Upstream(target)
        self._state = State.OPENING
        self._emit(OpenUpstream(target.host, target.port, kind))

    def _forward_body(self, event: BodyEvent) -> None:
        up, ex = self._current()
        data = ex.body(up, event)
        if data:
            self._emit(SendUpstream(data))
        if ex.request_complete:
            self._take_pipelined()

    def _retry(self) -> None:
        ex = self._exchange
        assert ex is not None
        self._open_upstream(ex.target, "forward")
        up, _ = self._current()
        ex.pending_replay = ex.restart(up)

    # -- the upstream side: the response ------------------------------------------------

    def _receive_response(self, up: Upstream, data: bytes) -> None:
        _, ex = self._current()
        try:
            to_client, progress = ex.response(up, data)
        except h11.RemoteProtocolError as exc:
            self._response_broken(up, ex, data, str(exc))
            return
        if to_client:
            self._emit(SendClient(to_client))
        if progress is Progress.SWITCHED:
            self._go_raw()
        elif progress is Progress.ENDED:
            self._end_response(up, ex)

    def _response_broken(self, up: Upstream, ex: Exchange, data: bytes, why: str) -> None:
        # A kept-alive upstream that closes before answering most likely timed out
        # while idle: the classic case for one replay on a fresh upstream.
        if not data and ex.reused_upstream and ex.replayable() is not None:
            self._drop_upstream()
            self._retry()
            return
        what = "closed the connection" if not data else "sent an invalid response"
        self._fail(502, f"the target {up.authority} {what} before the response ended: {why}")

    def _end_response(self, up: Upstream, ex: Exchange) -> None:
        if not ex.client_may_continue(up):
            self._close()
            return
        if up.spoiled:
            self._drop_upstream()
        self._next_request()
        self._pump_client()

    # -- raw splicing ---------------------------------------------------------------------

    def _go_raw(self) -> None:
        self._state = State.RAW
        self._parser_conn = None  # about 1 KB per tunnel, never used again
        early = bytes(self._inbox)
        self._inbox.clear()
        if early:
            self._emit(SendUpstream(early))
        if self._client_eof:
            self._relay_client(b"")

    def _relay_client(self, data: bytes) -> None:
        if data:
            self._emit(SendUpstream(data))
            return
        self._client_eof = True
        self._emit(EndUpstream())
        self._end_raw_direction("client")

    def _relay_upstream(self, data: bytes) -> None:
        if self._raw_ended["upstream"]:
            return  # nothing can follow the upstream's EOF
        if data:
            self._emit(SendClient(data))
            return
        self._emit(EndClient())
        self._end_raw_direction("upstream")

    def _end_raw_direction(self, side: str) -> None:
        self._raw_ended[side] = True
        if all(self._raw_ended.values()):
            self._upstream = None  # ended both ways: nothing left to close
            self._close()

    # -- endings --------------------------------------------------------------------------

    def _fail(self, status: int, reason: str) -> None:
        """Answer ``status`` if no response byte went out yet, else abort the client."""
        if self.response_started:
            self._close(abort=True)
        else:
            self._refuse(status, reason)

    def _refuse(self, status: int, reason: str) -> None:
        extra = _REALM if status == 407 else []
        self._emit(SendClient(httpwire.error_response(status, reason, extra)))
        self._close()

    def _close(self, *, abort: bool = False) -> None:
        if self._upstream is not None:
            self._drop_upstream()
        self._emit(CloseClient(abort=abort))
        self._state = State.CLOSED
        self._inbox.clear()

    def _drop_upstream(self) -> None:
        self._emit(CloseUpstream())
        self._upstream = None

    # -- small helpers --------------------------------------------------------------------

    def _emit(self, event: ProxyEvent) -> None:
        self._events.append(event)

    def _current(self) -> tuple[Upstream, Exchange]:
        assert self._upstream is not None and self._exchange is not None
        return self._upstream, self._exchange

    def _require(self, call: str) -> None:
        require_state(call, self._state)
