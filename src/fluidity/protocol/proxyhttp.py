"""The HTTP half of a client session, sans-I/O: reading requests, forwarding them.

:class:`HttpSession` is the middle layer of
:class:`~fluidity.protocol.proxy.ClientSession`, on top of
:class:`~fluidity.protocol.proxyrelay.RelaySession`. A request reader on llhttp
(:mod:`~fluidity.protocol.http1request`) turns the client's bytes into events, taken
one exchange at a time (pipelined requests wait); each request head is routed:

- origin-form: answered by the driver's local handler, or 400;
- ``CONNECT host:port``: an upstream is opened (OPENING), then the session turns raw;
- absolute-form: forwarded over the held upstream when its target repeats and it is
  reusable, else over a new one; the body follows as it arrives.

The response is fed to the exchange (:mod:`~fluidity.protocol.proxyexchange`), which
says where it ends: then the next pipelined request is parsed (IDLE), the client
closed, or, after a ``101``, the session turns raw. A reused upstream that closes
before answering gets the request replayed once on a new one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fluidity.errors import ProxyProtocolError, ResponseBroken
from fluidity.protocol import httpwire
from fluidity.protocol.http1request import ClientClosed, ReadEvent, RequestEnd, RequestReader
from fluidity.protocol.httpwire import ForwardTarget, RequestHead
from fluidity.protocol.proxyevents import (
    LocalHandler,
    OpenUpstream,
    ProxyStateError,
    SendClient,
    SendUpstream,
    State,
    local_request,
)
from fluidity.protocol.proxyexchange import Exchange, Progress, Upstream
from fluidity.protocol.proxyrelay import RelaySession


class HttpSession(RelaySession):
    """Reads the client's HTTP/1.1 requests and forwards each one, with its response.

    ``expected`` is ``user:password`` as bytes (None: no credentials asked);
    ``local_paths`` and ``max_head`` are :class:`~fluidity.protocol.proxy.ClientSession`'s.
    """

    def __init__(
        self, expected: bytes | None, local_paths: Mapping[str, LocalHandler], max_head: int
    ) -> None:
        super().__init__()
        self._expected = expected
        self._local_paths = local_paths
        self._max_head = max_head
        self._served = 0  # exchanges finished on this connection
        self._eof_fed = False
        self._reader_now: RequestReader | None = RequestReader(max_head)

    # -- the client side: requests ----------------------------------------------------

    @property
    def _reader(self) -> RequestReader:
        """The request reader; gone once the session is raw (it never reads again)."""
        if self._reader_now is None:
            raise ProxyStateError("a raw session parses no requests")
        return self._reader_now

    @property
    def _head_started(self) -> bool:
        """Whether a byte of a request not yet answered has arrived (not CR or LF)."""
        return self._reader_now is not None and self._reader_now.busy

    def _drop_reader(self) -> None:
        if self._reader_now is not None:
            self._reader_now.close()
            self._reader_now = None

    def _close(self, *, abort: bool = False) -> None:
        self._drop_reader()
        super()._close(abort=abort)

    def _parsing_client(self) -> bool:
        if self._state is State.IDLE:
            return True
        ex = self._exchange
        return self._state is State.FORWARDING and not (ex is not None and ex.request_complete)

    def _pump_client(self) -> None:
        while self._parsing_client():
            event = self._reader.next_event()
            if event is None and not self._feed_reader():
                return
            if event is not None:
                self._on_client_event(event)

    def _feed_reader(self) -> bool:
        """Give the reader what the client sent; False when there was nothing to give."""
        reader = self._reader
        if reader.done:
            return False
        if self._inbox:
            data = bytes(self._inbox)
            self._inbox.clear()
            reader.feed(data)
            if reader.rest:  # after a CONNECT or an upgrade: not for the reader
                self._inbox[:0] = reader.rest
            return True
        if self._client_eof and not self._eof_fed:
            self._eof_fed = True
            reader.feed_eof()
            return True
        return False

    def _on_client_event(self, event: ReadEvent) -> None:
        match event:
            case RequestHead():
                try:
                    self._route(event)
                except ProxyProtocolError as exc:
                    self._refuse(exc.status, str(exc))
            case bytes():
                self._forward_body(event)
            case RequestEnd(trailers):
                self._forward_body(None, trailers)
            case ClientClosed():
                self._close()
            case ProxyProtocolError():
                self._fail(event.status, str(event))

    def _route(self, request: RequestHead) -> None:
        if request.http_version not in (b"1.0", b"1.1"):
            version = request.http_version.decode()
            raise ProxyProtocolError(f"HTTP/{version} is not supported: speak HTTP/1.1", 505)
        httpwire.check_head(request, self._max_head)
        if request.target.startswith(b"/") or request.target == b"*":
            self._answer_locally(request)
            return
        httpwire.require_credentials(request.headers, self._expected)
        if request.method == b"CONNECT":
            self._open_tunnel(request, *httpwire.parse_connect_target(request.target))
        else:
            self._begin_forward(
                request, httpwire.parse_absolute_target(request.method, request.target)
            )

    def _answer_locally(self, request: RequestHead) -> None:
        handler = self._local_paths.get(request.target.partition(b"?")[0].decode("latin-1"))
        if handler is None:
            raise ProxyProtocolError("this is a proxy: send absolute-form requests or CONNECT")
        raw = request.headers
        authenticated = self._expected is None or httpwire.credentials_match(raw, self._expected)
        answer = handler(
            local_request(request.method, request.target, raw, authenticated=authenticated)
        )
        # A local request with a body is answered, and the connection closed unread.
        ended = isinstance(self._reader.next_event(), RequestEnd)
        keep = ended and httpwire.client_keeps_alive(request)
        self._emit(SendClient(answer.encode(head_only=request.method == b"HEAD", keep_alive=keep)))
        if keep:
            self._next_request()
        else:
            self._close()

    def _open_tunnel(self, request: RequestHead, host: str, port: int) -> None:
        if httpwire.has_body(request.headers):
            raise ProxyProtocolError("a CONNECT request carries no body: send the head alone")
        self._reader.next_event()  # the RequestEnd of a bodiless request
        target = ForwardTarget(host, port, b"")
        self._exchange = Exchange(request, target, "connect")
        self._open_upstream(target, "connect")

    def _next_request(self) -> None:
        self._served += 1
        self._exchange = None
        self._state = State.IDLE
        if self._reader.rest is not None:  # it stopped at a declined upgrade
            self._reader.close()
            self._reader_now = RequestReader(self._max_head)

    # -- forwarding one request ---------------------------------------------------------

    def _begin_forward(self, request: RequestHead, target: ForwardTarget) -> None:
        ex = self._exchange = Exchange(request, target, "forward")
        up = self._upstream
        if up is not None and up.reusable_for(target):
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

    def _forward_body(self, data: bytes | None, trailers: Sequence[httpwire.Header] = ()) -> None:
        """A piece of the request body (``data``), or its end (None) with ``trailers``."""
        _, ex = self._current()
        data = ex.end(trailers) if data is None else ex.body(data)
        if data:
            self._emit(SendUpstream(data))

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
        except ResponseBroken as exc:
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

    # -- turning raw ----------------------------------------------------------------------

    def _go_raw(self) -> None:
        self._state = State.RAW
        self._drop_reader()  # never used again
        early = bytes(self._inbox)
        self._inbox.clear()
        if early:
            self._emit(SendUpstream(early))
        if self._client_eof:
            self._relay_client(b"")
