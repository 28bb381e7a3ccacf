"""Where an HTTP/1.1 response ends, and a request body's wire form. Sans-I/O.

The agent forwards a response as the raw bytes the origin sent, so all it needs of
it is where it ends: then the upstream may carry the next request. That is framing,
not parsing: :class:`ResponseFramer` reads the status line and the framing headers of
each head (``Content-Length``, ``Transfer-Encoding``, ``Connection``, the HTTP
version), then walks the body by its length or chunk by chunk, without decoding or
copying it. It follows h11's reading of a response, which it replaced on this path
(h11's event machinery cost ~50 µs per forwarded request; this costs a few):

- interim ``1xx`` answers (``100 Continue``) pass, then the final answer follows;
  ``101`` switches protocols (an error unless the request proposed an ``Upgrade``);
- no body after ``HEAD``, ``204`` or ``304``; else ``Transfer-Encoding: chunked``
  (which wins over ``Content-Length``; any other coding is refused), else
  ``Content-Length``, else the body ends at the upstream's EOF (close-delimited);
- the connection persists after an HTTP/1.1 answer without ``Connection: close``
  whose body did not end at EOF; lines may end in CRLF or a bare LF.

Bytes are released once they are known to belong to a well-formed response: a head
once it is complete (so a broken or missing head can still be answered with a clean
502), a chunk-size line once it is whole, the body as it comes. A malformed or
truncated response raises :class:`~fluidity.errors.ResponseBroken`.

:func:`chunk` and :func:`last_chunk` write a chunked request body (a request read by
the session is forwarded in the framing its client chose).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

from fluidity.errors import ResponseBroken

MAX_RESPONSE_HEAD = 1024 * 1024  # a head (or a trailer section) bigger than this is broken
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: [^\r\n]*)?\r?")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r")


class Progress(enum.Enum):
    """How far a response got with the bytes fed so far."""

    MORE = "the response goes on"
    ENDED = "the response ended"
    SWITCHED = "the origin switched protocols (101): raw bytes from here"


class _In(enum.Enum):
    """Where in the response the framer is."""

    HEAD = "reading a head"
    LENGTH = "a Content-Length body"
    CHUNK_SIZE = "a chunk-size line"
    CHUNK_DATA = "a chunk's data"
    CHUNK_END = "the CRLF after a chunk's data"
    TRAILERS = "the trailer section after the last chunk"
    UNTIL_EOF = "a close-delimited body"
    DONE = "ended"
    SWITCHED = "switched protocols"


class ResponseFramer:
    """Finds the end of one response to a ``method`` request; see the module docstring.

    ``upgrade`` says whether the request proposed a protocol switch (an ``Upgrade``
    header). Feed it every upstream byte with :meth:`feed`, ``b""`` for EOF.
    """

    __slots__ = ("_head_only", "_held", "_in", "_left", "_upgrade", "keep_alive")

    def __init__(self, method: bytes, *, upgrade: bool = False) -> None:
        self._head_only = method == b"HEAD"
        self._upgrade = upgrade
        self._in = _In.HEAD
        self._held = b""  # an incomplete head or line, not released yet
        self._left = 0  # body or chunk bytes still to come
        self.keep_alive = False  # known once the final head is read

    @property
    def progress(self) -> Progress:
        if self._in is _In.DONE:
            return Progress.ENDED
        return Progress.SWITCHED if self._in is _In.SWITCHED else Progress.MORE

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed upstream bytes (``b""`` = EOF): ``(released, beyond)``.

        ``released`` is what may go to the client now (after a ``101``: everything);
        ``beyond`` what came after the end of the response (the origin's garbage).
        Raises ``ResponseBroken`` for a malformed response or one cut short by EOF.
        """
        if not data:
            self._eof()
            return b"", b""
        if self._in is _In.DONE:
            return b"", data
        if self._in is _In.SWITCHED:
            return data, b""
        buf = self._held + data if self._held else data
        self._held = b""
        at, size = 0, len(buf)
        while at < size:
            step = self._step(buf, at)
            if step < 0:  # an incomplete head or line: held until the rest arrives
                self._held = buf[at:]
                return buf[:at], b""
            at = step
            progress = self.progress
            if progress is Progress.ENDED:
                return buf[:at], buf[at:]
            if progress is Progress.SWITCHED:
                return buf, b""
        return buf, b""

    def _step(self, buf: bytes, at: int) -> int:
        """Read one piece at ``at``; the index after it, or -1 when it is incomplete."""
        state = self._in
        if state is _In.LENGTH or state is _In.CHUNK_DATA:
            take = min(self._left, len(buf) - at)
            self._left -= take
            if not self._left:
                self._in = _In.DONE if state is _In.LENGTH else _In.CHUNK_END
            return at + take
        if state is _In.UNTIL_EOF:
            return len(buf)
        if state is _In.HEAD:
            return self._read_head(buf, at)
        if state is _In.CHUNK_SIZE:
            return self._read_chunk_size(buf, at)
        if state is _In.CHUNK_END:
            if len(buf) - at < 2:
                return -1
            if buf[at : at + 2] != b"\r\n":
                raise ResponseBroken("a chunk's data is not followed by CRLF")
            self._in = _In.CHUNK_SIZE
            return at + 2
        return self._read_trailers(buf, at)

    def _read_head(self, buf: bytes, at: int) -> int:
        end = _HEAD_END.search(buf, at)
        if end is None:
            if len(buf) - at > MAX_RESPONSE_HEAD:
                raise ResponseBroken(f"the response head is over {MAX_RESPONSE_HEAD} bytes")
            return -1
        self._on_head(buf[at : end.start()].split(b"\n"))
        return end.end()

    def _on_head(self, lines: list[bytes]) -> None:
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise ResponseBroken(f"malformed status line {lines[0][:100]!r}")
        status = int(status_line.group(3))
        length, coding, connection = _framing_headers(lines)
        if status < 100:
            raise ResponseBroken(f"status {status} is not an HTTP status")
        if status == 101:
            if not self._upgrade:
                raise ResponseBroken("101 Switching Protocols answers no Upgrade request")
            self._in = _In.SWITCHED
            return
        if status < 200:  # interim (100 Continue...): the final answer follows
            return
        http11 = status_line.group(1) == b"1" and status_line.group(2) == b"1"
        self.keep_alive = http11 and b"close" not in _tokens(connection)
        if self._head_only or status in (204, 304):
            self._in = _In.DONE
        elif coding is not None:
            if coding.strip().lower() != b"chunked":
                raise ResponseBroken(f"unsupported Transfer-Encoding {coding[:100]!r}")
            self._in = _In.CHUNK_SIZE
        elif length is not None:
            self._left = _content_length(length)
            self._in = _In.LENGTH if self._left else _In.DONE
        else:
            self._in = _In.UNTIL_EOF
            self.keep_alive = False

    def _read_chunk_size(self, buf: bytes, at: int) -> int:
        """Read a chunk-size line, and every whole chunk after it in ``buf`` at once
        (one call per chunk cost more than the chunk); a piece cut by the end of
        ``buf`` is left to the step by step reading."""
        start, size = at, len(buf)
        while True:
            end = buf.find(b"\n", at)
            if end < 0:
                if size - at > MAX_CHUNK_LINE:
                    raise ResponseBroken("a chunk-size line is too long")
                return -1 if at == start else at
            line = _CHUNK_LINE.fullmatch(buf, at, end)
            if line is None:
                raise ResponseBroken(f"malformed chunk-size line {buf[at : min(end, at + 100)]!r}")
            left = int(line.group(1), 16)
            if not left:
                self._in = _In.TRAILERS
                return end + 1
            data_end = end + 1 + left
            if data_end + 2 > size:
                self._left, self._in = left, _In.CHUNK_DATA
                return end + 1
            if buf[data_end : data_end + 2] != b"\r\n":
                raise ResponseBroken("a chunk's data is not followed by CRLF")
            at = data_end + 2

    def _read_trailers(self, buf: bytes, at: int) -> int:
        for blank in (b"\r\n", b"\n"):
            if buf.startswith(blank, at):
                self._in = _In.DONE
                return at + len(blank)
        if len(buf) - at < 2:
            return -1
        end = _HEAD_END.search(buf, at)
        if end is None:
            if len(buf) - at > MAX_RESPONSE_HEAD:
                raise ResponseBroken(f"the trailer section is over {MAX_RESPONSE_HEAD} bytes")
            return -1
        _framing_headers([b"", *buf[at : end.start()].split(b"\n")])  # well-formed lines
        self._in = _In.DONE
        return end.end()

    def _eof(self) -> None:
        if self._in is _In.UNTIL_EOF:
            self._in = _In.DONE
        elif self._in is not _In.DONE and self._in is not _In.SWITCHED:
            raise ResponseBroken(f"the connection closed in {self._in.value}")


def _framing_headers(lines: list[bytes]) -> tuple[bytes | None, bytes | None, bytes]:
    """Check the header lines (``lines[1:]``); their Content-Length, Transfer-Encoding
    and Connection values, each comma-joined over repeats (None when absent)."""
    length: bytes | None = None
    coding: bytes | None = None
    connection = b""
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):  # obsolete line folding: part of the line before
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ResponseBroken(f"malformed header line {line[:100]!r}")
        lower = name.lower()
        if lower == b"content-length":
            length = value if length is None else length + b"," + value
        elif lower == b"transfer-encoding":
            coding = value if coding is None else coding + b"," + value
        elif lower == b"connection":
            connection += b"," + value
    return length, coding, connection


def _content_length(value: bytes) -> int:
    """The length a Content-Length value announces (repeats must agree)."""
    values = {v.strip() for v in value.split(b",")}
    if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
        raise ResponseBroken(f"invalid Content-Length {value[:100]!r}")
    return int(values.pop())


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",")}


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (nothing for empty data, which would end the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def last_chunk(trailers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The end of a chunked body: the last chunk, the trailers as given, a blank line."""
    lines = [b"0\r\n"]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in trailers)
    lines.append(b"\r\n")
    return b"".join(lines)
