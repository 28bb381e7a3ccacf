"""Reading a client's HTTP/1.1 requests with llhttp (``httptools``), sans-I/O.

llhttp is the parser of Node.js and, through httptools, of uvicorn: strict by
default (CRLF line ends, no whitespace before a colon, no obsolete line folding, no
repeated ``Content-Length``, never ``Content-Length`` with ``Transfer-Encoding``).
It replaced h11 here because it parses a request in about a microsecond where h11's
event machinery took tens (``benchmarks/http1_core.py``).

:class:`RequestReader` turns the client's bytes into events, in order:

- :class:`~fluidity.protocol.httpwire.RequestHead`: method, target, version and the
  headers as sent (raw names and values, order and repeats kept);
- ``bytes``: a piece of the body, chunked framing removed;
- :class:`RequestEnd`: the end of the body, with any trailers;
- :class:`ClientClosed`: the client's EOF between two requests;
- a :class:`~fluidity.errors.ProxyProtocolError` (with its status) for a request
  that cannot be read; nothing follows it.

llhttp reads everything it is fed, pipelined requests too: their events wait until
taken. It stops after a ``CONNECT`` or a request that upgrades (``Upgrade`` listed in
``Connection``); what followed the head is :attr:`RequestReader.rest` (tunnel data,
or the next request if the origin declines the upgrade: a new reader reads it).

What h11 checked and llhttp does not is checked here: ``Host`` in HTTP/1.1 (400),
``Transfer-Encoding`` exactly ``chunked`` (501), an incomplete head held to
``max_head`` bytes (431). llhttp knows a fixed list of methods; a request with
another one (any token is a method) is shown to it as ``POST``, unless it follows
another request in the same read (refused: its start is unknown). An upgrade
request with a body is refused (400): llhttp would hand its body over as
new-protocol bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httptools

from fluidity.errors import ProxyProtocolError
from fluidity.protocol.httpwire import Header, RequestHead, has_body


@dataclass(frozen=True, slots=True)
class RequestEnd:
    """The request's body ended; ``trailers`` as sent (empty unless chunked)."""

    trailers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """The client closed its side between two requests."""


ReadEvent = RequestHead | bytes | RequestEnd | ClientClosed | ProxyProtocolError

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_MAX_METHOD = 64
_SMUGGLING = "the request has both Content-Length and Transfer-Encoding: send only one"
_FRAMING = "unsupported request framing ({}): send Content-Length or chunked bodies"


class RequestReader:
    """The client's requests as events; see the module docstring.

    ``max_head`` bounds a request head still incomplete: beyond it the reader
    answers 431 (a complete head is measured by the session).
    """

    def __init__(self, max_head: int) -> None:
        # The parser calls this reader back: a reference cycle, broken by close().
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._max_head = max_head
        self._events: list[ReadEvent] = []
        self._taken = 0  # events before this index were taken
        self._in_message = False
        self._in_head = False
        self._head_bytes = 0
        self._fed = 0  # bytes of the current feed
        self._ended_in_feed = False
        self._url = b""
        self._headers: list[Header] = []
        self._trailers: list[Header] = []
        self._failure: ProxyProtocolError | None = None
        self._method: bytes | None = None  # an extension method llhttp was shown as POST
        self._stash = b""  # the start of a request line with an unknown method
        # The bytes of a request line whose method is not read yet (None: where it
        # began is unknown, another request ended in the same read).
        self._line: bytes | None = b""
        self.rest: bytes | None = None  # set once the reader stopped (CONNECT, upgrade)

    # -- what the session calls -----------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a request has begun that the session has not taken in full."""
        return self._in_message or self._taken < len(self._events)

    @property
    def done(self) -> bool:
        """Whether the reader reads no more: it stopped, failed, or was closed."""
        return self.rest is not None or self._failure is not None or self._parser is None

    def close(self) -> None:
        """Read no more, and let go of the parser now (not at the next garbage
        collection: the parser and the reader refer to each other)."""
        self._parser = None

    def next_event(self) -> ReadEvent | None:
        """The oldest event not taken yet, or None."""
        if self._taken == len(self._events):
            if self._taken:
                self._events.clear()
                self._taken = 0
            return None
        event = self._events[self._taken]
        self._taken += 1
        return event

    def feed(self, data: bytes) -> None:
        """Read client bytes; their events queue up (nothing once :attr:`done`)."""
        if self.done:
            return
        if self._stash:
            data, self._stash = self._stash + data, b""
            self._parser = httptools.HttpRequestParser(self)
        parser = self._parser
        assert parser is not None  # not done
        self._fed, self._ended_in_feed = len(data), False
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.rest = data[int(exc.args[0]) :]
        except httptools.HttpParserInvalidMethodError as exc:
            if not self._extension_method(data):
                self._fail(_translate(exc))
        except httptools.HttpParserCallbackError:
            assert self._failure is not None, "a callback failed without saying why"
            self._events.append(self._failure)
        except httptools.HttpParserError as exc:
            self._fail(_translate(exc))
        else:
            self._note_line(data)
            self._check_head_size()

    def feed_eof(self) -> None:
        """The client's EOF: the end of the connection, or of a request cut short."""
        if self.done:
            return
        if self._in_message:
            reason = "the client closed the connection before the request ended"
            self._fail(ProxyProtocolError(f"malformed request ({reason}): send whole requests"))
        else:
            self._events.append(ClientClosed())

    def _extension_method(self, data: bytes) -> bool:
        """Read a request whose method llhttp does not know (any RFC 9110 token is a
        method): its request line is shown to a new parser as POST, whose framing is an
        extension method's, and the head reports the method as sent.

        False when the method is no token, or when another request ended earlier in
        the same read: where this one began is then unknown, and it is refused.
        """
        if self._ended_in_feed or self._line is None:
            return False
        line, self._line = (self._line + data).lstrip(b"\r\n"), b""
        method, space, _ = line.partition(b" ")
        if not _TOKEN.fullmatch(method) or len(method) > _MAX_METHOD:
            return False
        if not space:  # the method is not whole yet
            self._stash = line
            return True
        self._method = method
        self._parser = httptools.HttpRequestParser(self)
        self.feed(b"POST" + line[len(method) :])
        return True

    # -- llhttp's callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = self._in_head = True
        # A head that begins after another request ended in the same feed counts from
        # the next feed: the bytes before it in this one were that request's.
        self._head_bytes = -self._fed if self._ended_in_feed else 0
        self._url, self._headers, self._trailers = b"", [], []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        (self._headers if self._in_head else self._trailers).append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        assert parser is not None, "llhttp calls back only while it parses"
        method, self._method = self._method or parser.get_method(), None
        version = parser.get_http_version().encode()
        upgrade = method != b"CONNECT" and parser.should_upgrade()
        head = RequestHead(method, self._url, version, self._headers, upgrade)
        problem = _problem(head)
        if problem is not None:
            self._failure = problem
            raise problem
        self._events.append(head)

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._ended_in_feed = True
        self._events.append(RequestEnd(tuple(self._trailers)))

    # -- helpers --------------------------------------------------------------------------

    def _note_line(self, data: bytes) -> None:
        """Keep the bytes of a request line until its method is read: llhttp may
        refuse the method only once more of it arrives."""
        if not self._in_message or self._url:
            self._line = b""
        elif self._line is not None:
            self._line = None if self._ended_in_feed else self._line + data

    def _check_head_size(self) -> None:
        if not self._in_head:
            return
        self._head_bytes += self._fed
        if self._head_bytes > self._max_head:
            self._fail(
                ProxyProtocolError(
                    f"the request head is over {self._max_head} bytes: "
                    "send fewer or shorter headers",
                    431,
                )
            )

    def _fail(self, error: ProxyProtocolError) -> None:
        self._failure = error
        self._events.append(error)


def _problem(head: RequestHead) -> ProxyProtocolError | None:
    """What h11 refused and llhttp lets through, or None."""
    names = {name.lower() for name, _ in head.headers}
    if head.http_version == b"1.1" and b"host" not in names:
        return ProxyProtocolError(
            "malformed request (Missing mandatory Host header): send a valid HTTP/1.1 request"
        )
    if b"transfer-encoding" in names:
        codings = b",".join(v for n, v in head.headers if n.lower() == b"transfer-encoding")
        if codings.strip().lower() != b"chunked":
            return ProxyProtocolError(_FRAMING.format(f"Transfer-Encoding: {codings!r}"), 501)
    if head.upgrade and has_body(head.headers):
        return ProxyProtocolError(
            "an Upgrade request cannot carry a body through this proxy: "
            "send the body after the upgrade, or the request without Upgrade"
        )
    return None


def _translate(exc: httptools.HttpParserError) -> ProxyProtocolError:
    """llhttp's complaint as the answer to the client."""
    text = str(exc)
    if "Content-Length" in text and "Transfer-Encoding" in text:
        return ProxyProtocolError(_SMUGGLING)
    if "Transfer-Encoding" in text:
        return ProxyProtocolError(_FRAMING.format(text), 501)
    return ProxyProtocolError(f"malformed request ({text}): send a valid HTTP/1.1 request")
