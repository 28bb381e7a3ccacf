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
  a framer (:mod:`~fluidity.protocol.http1frame`) only tells where each ends, so one
  client connection carries many requests, to several hosts, reusing the upstream
  when the target repeats. A ``101`` answer to an ``Upgrade`` request turns the session raw.
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
driver reported lost or one whose both directions ended. ``CloseUpstream(orderly=True)``
drops an upstream whose exchanges were all complete (the target should see FIN);
without ``orderly`` something was cut (the target must see RST). The agent's own errors are
``text/plain`` lines saying what was wrong and how to fix it, with ``Connection:
close``. A ``Proxy-Authorization`` value never appears in any message.

The session is built in three layers, one module each: this one is the driver's
interface; :mod:`~fluidity.protocol.proxyhttp` reads requests and forwards them with
their responses; :mod:`~fluidity.protocol.proxyrelay` holds the shared state, raw
splicing and the endings.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from fluidity.protocol.authority import parse_authority
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
)
from fluidity.protocol.proxyhttp import HttpSession

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


class ClientSession(HttpSession):
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
        expected = None if credentials is None else ":".join(credentials).encode()
        super().__init__(expected, local_paths, max_head_size)

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
