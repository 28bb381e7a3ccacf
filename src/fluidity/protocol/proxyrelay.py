"""A client session's shared state, raw splicing and endings, sans-I/O.

:class:`RelaySession` is the bottom layer of
:class:`~fluidity.protocol.proxy.ClientSession`; :class:`~fluidity.protocol.proxyhttp.HttpSession`
reads and forwards HTTP on top of it. It holds what every state of a session shares
-- the events queued for the driver, the upstream held, the current exchange, the
client bytes not yet parsed -- and does what needs no HTTP:

- raw splicing (state RAW): client bytes go upstream and upstream bytes to the
  client, each EOF passed on as a half-close; once both directions ended the
  upstream needs no closing and ``CloseClient`` ends the session;
- endings: ``_refuse`` answers an error (with ``Proxy-Authenticate`` for 407),
  ``_fail`` aborts instead once a response byte went out, and ``_close`` sends
  ``CloseUpstream`` for an upstream still held before the final ``CloseClient``:
  orderly if its exchanges were complete, a reset if something was cut.
"""

from __future__ import annotations

from fluidity.protocol import httpwire
from fluidity.protocol.proxyevents import (
    CloseClient,
    CloseUpstream,
    EndClient,
    EndUpstream,
    ProxyEvent,
    SendClient,
    SendUpstream,
    State,
    require_state,
)
from fluidity.protocol.proxyexchange import Exchange, Upstream

_REALM = [(b"Proxy-Authenticate", b'Basic realm="fluidity"')]


class RelaySession:
    """The state one client connection's session holds; raw relaying and endings."""

    def __init__(self) -> None:
        # A list, not a deque: a session holds a few events at a time, and an
        # empty deque costs ~600 bytes per idle client connection.
        self._events: list[ProxyEvent] = []
        self._state = State.IDLE
        self._inbox = bytearray()  # client bytes not yet given to the request parser
        self._client_eof = False
        self._raw_ended = {"client": False, "upstream": False}
        self._exchange: Exchange | None = None
        self._upstream: Upstream | None = None

    # -- raw splicing ---------------------------------------------------------------------

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
        if self._exchange is not None and self._exchange.response_started:
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
        assert self._upstream is not None
        self._emit(CloseUpstream(orderly=self._upstream.at_rest))
        self._upstream = None

    # -- small helpers --------------------------------------------------------------------

    def _emit(self, event: ProxyEvent) -> None:
        self._events.append(event)

    def _current(self) -> tuple[Upstream, Exchange]:
        assert self._upstream is not None and self._exchange is not None
        return self._upstream, self._exchange

    def _require(self, call: str) -> None:
        require_state(call, self._state)
