"""One port, two proxy protocols: HTTP and SOCKS5, told apart by the first byte, sans-I/O.

The agent's driver (:mod:`fluidity.agent.client`) drives any :class:`DriverSession`:
it feeds client and upstream bytes in, reports the upstream's fate, and carries out
the :mod:`~fluidity.protocol.proxyevents` it takes out. The HTTP core,
:class:`~fluidity.protocol.proxy.ClientSession`, is one already.
:class:`SocksRelay` makes the SOCKS5 core (:class:`~fluidity.protocol.socks.SocksSession`,
which answers each call with a list of events and stops at the handshake) one too:
it queues those events, and once the relay runs it passes upstream bytes to the
client and closes the client when both directions have ended.

:class:`FirstByteSession` is the session of a fresh connection: it waits for the
first byte (``0x05`` opens a SOCKS5 greeting, an HTTP request starts with a letter),
builds the right session, and delegates everything to it from then on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from fluidity.protocol.proxyevents import (
    CloseClient,
    EndClient,
    EndUpstream,
    ProxyEvent,
    ProxyStateError,
    SendClient,
)
from fluidity.protocol.socks import SocksSession, State, is_socks5

__all__ = ["DriverSession", "FirstByteSession", "SocksRelay"]


class DriverSession(Protocol):
    """What the agent's driver calls on a client connection's session.

    The contracts are those of :class:`~fluidity.protocol.proxy.ClientSession`.
    """

    @property
    def wants_client_data(self) -> bool: ...

    @property
    def relaying(self) -> bool:
        """True while the session only passes bytes on: client bytes would come
        back as one ``SendUpstream``, upstream bytes as one ``SendClient``. The
        driver may then move bytes itself and call the session only for ends."""

    @property
    def idle(self) -> bool:
        """Waiting for the client's next request (or SOCKS5 handshake), nothing under
        way: the driver's head timeout runs only now, and a draining agent may close."""
        ...

    def next_event(self) -> ProxyEvent | None: ...

    def receive_client(self, data: bytes) -> None: ...

    def receive_upstream(self, data: bytes) -> None: ...

    def upstream_opened(self) -> None: ...

    def upstream_failed(self, status: int, reason: str) -> None: ...

    def upstream_lost(self, reason: str) -> None: ...

    def retry_upstream(self) -> None: ...

    def replayable_request(self) -> bytes | None: ...

    def head_timed_out(self) -> None: ...


_HANDSHAKE = (State.GREETING, State.AUTH, State.REQUEST)
_READING = (*_HANDSHAKE, State.RELAY)


class SocksRelay:
    """A :class:`SocksSession` behind the :class:`DriverSession` interface.

    After the handshake, the session is a pipe with half-closes: ``CloseClient``
    follows once the client and the upstream have both ended, or at once (an abort)
    when the upstream is lost. A SOCKS5 connection carries one upstream, opened once,
    so nothing is ever replayable.
    """

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.core = SocksSession(credentials)
        self._events: deque[ProxyEvent] = deque()
        self._ended = {"client": False, "upstream": False}
        self._closed = False

    @property
    def wants_client_data(self) -> bool:
        """Read the client during the handshake and the relay, not while connecting."""
        return not self._closed and (
            self.core.state in _HANDSHAKE or self.core.state is State.RELAY
        )

    @property
    def relaying(self) -> bool:
        return not self._closed and self.core.state is State.RELAY

    @property
    def idle(self) -> bool:
        """In the handshake: the client has yet to say where to connect."""
        return not self._closed and self.core.state in _HANDSHAKE

    def next_event(self) -> ProxyEvent | None:
        return self._events.popleft() if self._events else None

    def receive_client(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` is its EOF."""
        self._take(self.core.receive(data))

    def receive_upstream(self, data: bytes) -> None:
        """Bytes from the upstream, passed to the client; ``b""`` is its EOF."""
        if self._closed or self.core.state is not State.RELAY:
            return
        if data:
            self._emit(SendClient(data))
            return
        self._emit(EndClient())
        self._end("upstream")

    def upstream_opened(self) -> None:
        """Answer success and start the relay. After the session closed the client (it
        sent too much early data) nothing follows: the driver drops the upstream with
        the client connection, as after any ``CloseClient``."""
        self._take(self.core.upstream_opened())

    def upstream_failed(self, status: int, reason: str) -> None:
        """Answer the SOCKS5 code closest to ``status`` and close."""
        self._take(self.core.upstream_failed(status, reason))

    def upstream_lost(self, reason: str) -> None:
        """The upstream broke: reset the client so the cut does not look like an end."""
        if not self._closed and self.core.state is State.RELAY:
            self._emit(CloseClient(abort=True))

    def retry_upstream(self) -> None:
        raise ProxyStateError("retry_upstream(): a SOCKS5 connection is never replayed")

    def replayable_request(self) -> bytes | None:
        return None

    def head_timed_out(self) -> None:
        """The client stalled in the handshake: close (SOCKS5 has no way to say why)."""
        if not self._closed and self.core.state in _HANDSHAKE:
            self._emit(CloseClient())

    # -- internals --------------------------------------------------------------------

    def _take(self, events: list[ProxyEvent]) -> None:
        """Queue the core's events; its EndUpstream is the client's end of the relay."""
        for event in events:
            self._emit(event)
            if isinstance(event, EndUpstream):
                self._end("client")

    def _emit(self, event: ProxyEvent) -> None:
        if self._closed:
            return
        self._events.append(event)
        if isinstance(event, CloseClient):
            self._closed = True

    def _end(self, side: str) -> None:
        self._ended[side] = True
        if all(self._ended.values()):
            self._emit(CloseClient())


class FirstByteSession:
    """Chooses HTTP or SOCKS5 by the client's first byte, then delegates to that session.

    ``http`` and ``socks`` build the sessions. Before the first byte the session
    wants data and has no events; an EOF or a head timeout before it goes to HTTP
    (which closes quietly, or answers 408). Upstream calls before the choice are
    driver bugs (:class:`ProxyStateError`): no upstream can be open yet.
    """

    def __init__(
        self, http: Callable[[], DriverSession], socks: Callable[[], DriverSession]
    ) -> None:
        self._factories = (http, socks)
        self.inner: DriverSession | None = None

    @property
    def wants_client_data(self) -> bool:
        return self.inner is None or self.inner.wants_client_data

    @property
    def relaying(self) -> bool:
        return self.inner is not None and self.inner.relaying

    @property
    def idle(self) -> bool:
        return self.inner is None or self.inner.idle

    def next_event(self) -> ProxyEvent | None:
        return None if self.inner is None else self.inner.next_event()

    def receive_client(self, data: bytes) -> None:
        self._choose(data).receive_client(data)

    def receive_upstream(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.receive_upstream(data)

    def upstream_opened(self) -> None:
        self._chosen("upstream_opened").upstream_opened()

    def upstream_failed(self, status: int, reason: str) -> None:
        self._chosen("upstream_failed").upstream_failed(status, reason)

    def upstream_lost(self, reason: str) -> None:
        if self.inner is not None:
            self.inner.upstream_lost(reason)

    def retry_upstream(self) -> None:
        self._chosen("retry_upstream").retry_upstream()

    def replayable_request(self) -> bytes | None:
        return None if self.inner is None else self.inner.replayable_request()

    def head_timed_out(self) -> None:
        self._choose(b"").head_timed_out()

    def _choose(self, data: bytes) -> DriverSession:
        if self.inner is None:
            http, socks = self._factories
            self.inner = socks() if data and is_socks5(data[0]) else http()
        return self.inner

    def _chosen(self, call: str) -> DriverSession:
        if self.inner is None:
            raise ProxyStateError(f"{call}() before the client sent anything: no upstream exists")
        return self.inner
