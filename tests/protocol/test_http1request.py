"""The request reader on llhttp: events in order, pipelining, stops, and its own checks.

No event loop: the reader is fed bytes, whole or split anywhere, and the events it
queues are compared.
"""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidity.errors import ProxyProtocolError
from fluidity.protocol.http1request import ClientClosed, ReadEvent, RequestEnd, RequestReader
from fluidity.protocol.httpwire import Header, RequestHead

GET = b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nX-Case: KeEp\r\n\r\n"
POST = (
    b"POST http://a.example/up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nTrailer-One: 1\r\n\r\n"
)


def events(reader: RequestReader) -> list[ReadEvent]:
    taken = []
    while (event := reader.next_event()) is not None:
        taken.append(event)
    return taken


def read(*pieces: bytes, max_head: int = 65536) -> tuple[list[ReadEvent], RequestReader]:
    reader = RequestReader(max_head)
    for piece in pieces:
        reader.feed(piece)
    return events(reader), reader


def merge_body(taken: list[ReadEvent]) -> list[ReadEvent]:
    """Body pieces joined: where llhttp cuts them depends on the reads."""
    merged: list[ReadEvent] = []
    for event in taken:
        if isinstance(event, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += event
        else:
            merged.append(event)
    return merged


def test_heads_keep_the_header_bytes_as_sent_and_pipelined_requests_queue_in_order() -> None:
    taken, reader = read(b"\r\n" + GET + POST)
    assert taken[0] == RequestHead(
        b"GET",
        b"http://a.example/",
        b"1.1",
        [(b"Host", b"a.example"), (b"X-Case", b"KeEp")],
    )
    assert taken[1] == RequestEnd()
    assert isinstance(taken[2], RequestHead) and taken[2].method == b"POST"
    assert taken[3:] == [b"hello", RequestEnd(((b"Trailer-One", b"1"),))]
    assert not reader.busy


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(GET + POST)), max_size=6))
def test_any_split_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    data = GET + POST
    points = sorted({0, len(data), *cuts})
    pieces = [data[a:b] for a, b in itertools.pairwise(points) if b > a]
    assert merge_body(read(*pieces)[0]) == merge_body(read(data)[0])


def test_a_connect_stops_the_reader_and_what_followed_is_the_rest() -> None:
    taken, reader = read(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03")
    assert [type(e) for e in taken] == [RequestHead, RequestEnd]
    assert reader.rest == b"\x16\x03" and reader.done
    reader.feed(b"more")  # a stopped reader reads nothing
    assert events(reader) == []


def test_an_upgrade_request_stops_the_reader_and_says_so() -> None:
    upgrade = (
        b"GET http://a.example/ws HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    )
    taken, reader = read(upgrade + GET)
    assert isinstance(taken[0], RequestHead) and taken[0].upgrade
    assert reader.rest == GET


def test_an_upgrade_request_with_a_body_is_refused() -> None:
    upgrade = (
        b"POST http://a.example/ HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n"
        b"Connection: Upgrade\r\nContent-Length: 2\r\n\r\nhi"
    )
    taken, _ = read(upgrade)
    assert isinstance(taken[-1], ProxyProtocolError) and "Upgrade" in str(taken[-1])


@pytest.mark.parametrize(
    "pieces",
    [
        [b"BREW http://pot/ HTTP/1.1\r\nHost: pot\r\n\r\n"],
        [b"BR", b"EW", b" http://pot/ HTTP/1.1\r\nHost: pot\r\n\r\n"],
        [b"B", b"REW http://pot/ HTTP/1.1\r\nHost: pot\r\n\r\n"],  # "B" could begin BIND
    ],
)
def test_an_extension_method_is_read_as_sent(pieces: list[bytes]) -> None:
    taken, _ = read(*pieces)
    assert isinstance(taken[0], RequestHead) and taken[0].method == b"BREW"
    assert taken[1] == RequestEnd()


def test_an_extension_method_behind_another_request_in_the_same_read_is_refused() -> None:
    taken, _ = read(GET + b"BREW http://pot/ HTTP/1.1\r\nHost: pot\r\n\r\n")
    assert isinstance(taken[0], RequestHead) and taken[1] == RequestEnd()
    assert isinstance(taken[2], ProxyProtocolError) and taken[2].status == 400


@pytest.mark.parametrize(
    ("request_bytes", "status", "words"),
    [
        (b"GET http://a/ HTTP/1.1\r\n\r\n", 400, b"Host"),
        (
            b"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
            b"chunked",
        ),
        (b"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, b"chunked"),
        (
            b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
            b"only one",
        ),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400, b"malformed request"),
        (
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\nFolded: x\r\n y\r\n\r\n",
            400,
            b"malformed request",
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n", 400, b"malformed request"),
    ],
)
def test_requests_h11_refused_are_refused_with_the_same_status(
    request_bytes: bytes, status: int, words: bytes
) -> None:
    taken, reader = read(request_bytes)
    assert isinstance(taken[-1], ProxyProtocolError)
    assert taken[-1].status == status and words.decode() in str(taken[-1])
    assert reader.done


def test_an_incomplete_head_over_the_bound_gets_431() -> None:
    taken, _ = read(b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX-Big: ", b"a" * 600, max_head=512)
    assert isinstance(taken[-1], ProxyProtocolError) and taken[-1].status == 431


def test_a_head_after_a_large_body_in_the_same_read_is_not_taken_for_a_large_head() -> None:
    body = b"x" * 1000
    post = b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + body
    taken, reader = read(post + b"GET http://a/ HTTP/1.1\r\nHo", max_head=512)
    assert not any(isinstance(e, ProxyProtocolError) for e in taken)
    assert reader.busy  # the second head has begun


def test_eof_between_requests_is_a_close_and_within_one_an_error() -> None:
    reader = RequestReader(65536)
    reader.feed(GET)
    reader.feed_eof()
    assert events(reader)[-1] == ClientClosed()
    reader = RequestReader(65536)
    reader.feed(GET[:10])
    reader.feed_eof()
    last = events(reader)[-1]
    assert isinstance(last, ProxyProtocolError) and last.status == 400


# -- differential: well-formed requests read as h11 read them ------------------------------

_NAMES = st.from_regex(rb"\A[A-Za-z][A-Za-z0-9-]{0,15}\Z").filter(
    lambda n: n.lower() not in (b"host", b"content-length", b"transfer-encoding", b"connection")
)
_VALUES = st.from_regex(rb"\A[!-~]([ !-~]{0,20}[!-~])?\Z")


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"BREW", b"PATCH"]))
    headers = draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=5))
    pieces = draw(st.lists(st.binary(min_size=1, max_size=30), max_size=3))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    head = b"%s http://a.example/p?q=1 HTTP/1.1\r\nHost: a.example\r\n" % method
    head += b"".join(b"%s: %s\r\n" % (n, v) for n, v in headers)
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(b"".join(pieces)) + b"".join(pieces)
    if framing == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nT: 1\r\n\r\n"
    return head + b"\r\n"


def h11_read(data: bytes) -> tuple[tuple[bytes, bytes, list[Header]], bytes, list[Header]]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    body = b""
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        body += event.data
    head = (request.method, request.target, list(request.headers.raw_items()))
    return head, body, list(event.headers.raw_items())


@settings(max_examples=300, deadline=None)
@given(data=requests(), cut=st.integers(min_value=0, max_value=500))
def test_a_well_formed_request_reads_as_h11_read_it(data: bytes, cut: int) -> None:
    cut %= len(data) + 1
    taken, _ = read(*[p for p in (data[:cut], data[cut:]) if p])
    head, *rest = merge_body(taken)
    assert isinstance(head, RequestHead) and isinstance(rest[-1], RequestEnd)
    body = rest[0] if isinstance(rest[0], bytes) else b""
    h11_head, h11_body, h11_trailers = h11_read(data)
    assert (head.method, head.target, head.headers) == h11_head
    assert (body, list(rest[-1].trailers)) == (h11_body, h11_trailers)
