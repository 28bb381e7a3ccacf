"""What the agent's proxy core tells its driver, and what local handlers exchange.

Small frozen dataclasses, dispatched by the driver with one ``match`` (positional
patterns work: ``case SendClient(data):``). The driver carries them out in order.
They are the vocabulary of :class:`fluidity.protocol.proxy.ClientSession`, which
re-exports them; other client-facing cores (SOCKS5) can speak it too.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from fluidity.errors import ProxyProtocolError
from fluidity.protocol import httpwire


class State(enum.Enum):
    """Where a session is; the transitions are drawn in :mod:`fluidity.protocol.proxy`."""

    IDLE = "waiting for a request head"
    OPENING = "waiting for the driver to open the upstream"
    FORWARDING = "relaying one HTTP request and its response"
    RAW = "splicing bytes both ways (CONNECT or a protocol upgrade)"
    CLOSED = "finished"


# Driver calls legal only in some states; the others are legal, or harmless no-ops,
# in every state (see the method docstrings).
_LEGAL = {
    "upstream_opened": frozenset({State.OPENING}),
    "upstream_failed": frozenset({State.OPENING}),
    "retry_upstream": frozenset({State.FORWARDING}),
}


class ProxyStateError(ProxyProtocolError):
    """The driver called a :class:`ClientSession` method that the session's state forbids."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=500)


def require_state(call: str, state: State) -> None:
    """Raise ProxyStateError if the driver call ``call`` is not legal in ``state``."""
    if state not in _LEGAL[call]:
        legal = " or ".join(sorted(s.name for s in _LEGAL[call]))
        raise ProxyStateError(
            f"{call}() is legal only in state {legal}, but the session is "
            f"{state.name} ({state.value}): follow the events it emits"
        )


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Open a tunnel stream to ``host:port``; answer with ``upstream_opened/failed()``.

    ``kind`` says what the stream is for: ``"connect"`` or ``"forward"`` from the
    HTTP core, ``"socks"`` from the SOCKS5 one. ``host`` is bare: an IPv6 literal comes
    without brackets. Stop reading the client until the answer.
    """

    host: str
    port: int
    kind: str


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Write ``data`` to the upstream."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndUpstream:
    """Half-close the upstream: the client will send no more."""


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Close the upstream and forget it; its later bytes are ignored.

    ``orderly`` when every exchange on it was complete both ways (a kept-alive
    upstream between requests): the target should see an orderly close (FIN).
    Otherwise something was cut, and the target must see a reset (RST).
    """

    orderly: bool = False


@dataclass(frozen=True, slots=True)
class SendClient:
    """Write ``data`` to the client."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndClient:
    """Half-close the client connection (shut down writing): the upstream sent EOF."""


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close the client after flushing what was sent; ``abort`` resets it instead.

    Always the session's last event. An abort makes an unfinished response look
    unfinished to the client, never complete.
    """

    abort: bool = False


ProxyEvent = (
    OpenUpstream | SendUpstream | EndUpstream | CloseUpstream | SendClient | EndClient | CloseClient
)


@dataclass(frozen=True, slots=True)
class LocalRequest:
    """An origin-form request for a path the driver registered (``/proxy.pac``...).

    ``headers`` are as sent (Latin-1 text) except ``Proxy-Authorization``, which is
    withheld; ``authenticated`` says whether the session's credentials were given
    (always True when the session has none).
    """

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    authenticated: bool


# A header name is an RFC 9110 token; a value is visible Latin-1 text, spaces and tabs
# (no CR or LF that would end the line early).
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")


@dataclass(frozen=True, slots=True)
class LocalResponse:
    """A local handler's answer; the core adds ``Content-Length`` (and ``Connection``).

    Raises ValueError at construction for a status outside 200-599 or a header that
    could break the response head (the handler has a bug, not the client).
    """

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"LocalResponse status {self.status} is not a final status 200-599")
        for name, value in (("Content-Type", self.content_type), *self.headers):
            if not _TOKEN.fullmatch(name) or _UNSAFE_VALUE.search(value):
                raise ValueError(f"LocalResponse header {name!r} is not a valid header line")

    def encode(self, *, head_only: bool, keep_alive: bool) -> bytes:
        """The response bytes: the head, then the body unless ``head_only`` (HEAD)."""
        headers = [(b"Content-Type", self.content_type.encode("latin-1"))]
        headers += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in self.headers]
        return httpwire.local_response(
            self.status, self.body, headers, head_only=head_only, keep_alive=keep_alive
        )


LocalHandler = Callable[[LocalRequest], LocalResponse]


def local_request(
    method: bytes, target: bytes, headers: list[httpwire.Header], *, authenticated: bool
) -> LocalRequest:
    """Build the :class:`LocalRequest` a handler sees from the parsed request."""
    path, _, query = target.partition(b"?")
    return LocalRequest(
        method=method.decode("latin-1"),
        path=path.decode("latin-1"),
        query=query.decode("latin-1"),
        headers=tuple(
            (n.decode("latin-1"), v.decode("latin-1"))
            for n, v in headers
            if n.lower() != b"proxy-authorization"
        ),
        authenticated=authenticated,
    )
