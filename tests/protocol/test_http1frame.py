"""Where a response ends (ResponseFramer) and the chunked request body writer.

No event loop: the framer is fed bytes, whole or split anywhere, and must release the
same bytes and find the same end. h11 serves as the reference reader of what the
chunk writer produces.
"""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidity.errors import ResponseBroken
from fluidity.protocol.http1frame import (
    MAX_RESPONSE_HEAD,
    Progress,
    ResponseFramer,
    chunk,
    last_chunk,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: yes\r\n\r\n"
)


def feed_all(framer: ResponseFramer, pieces: list[bytes]) -> tuple[bytes, bytes]:
    released, beyond = b"", b""
    for piece in pieces:
        ready, extra = framer.feed(piece)
        released += ready
        beyond += extra
    return released, beyond


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@pytest.mark.parametrize("response", [OK, CHUNKED], ids=["length", "chunked"])
def test_a_response_ends_where_its_framing_says_and_the_rest_is_beyond(response: bytes) -> None:
    framer = ResponseFramer(b"GET")
    released, beyond = framer.feed(response + b"HTTP/1.1 200 garbage")
    assert (released, beyond) == (response, b"HTTP/1.1 200 garbage")
    assert framer.progress is Progress.ENDED and framer.keep_alive


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_any_split_of_the_bytes_releases_the_same_response(cuts: list[int]) -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\n" + CHUNKED
    framer = ResponseFramer(b"POST")
    released, beyond = feed_all(framer, split(response + b"XX", cuts))
    assert (released, beyond) == (response, b"XX")
    assert framer.progress is Progress.ENDED


def test_a_head_is_held_until_complete_and_the_body_released_as_it_comes() -> None:
    framer = ResponseFramer(b"GET")
    assert framer.feed(b"HTTP/1.1 200 OK\r\nContent-Le") == (b"", b"")
    assert framer.feed(b"ngth: 4\r\n\r\nab") == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab",
        b"",
    )
    assert framer.progress is Progress.MORE
    assert framer.feed(b"cd") == (b"cd", b"")
    assert framer.progress is Progress.ENDED


def test_an_interim_100_is_released_before_the_final_answer_arrives() -> None:
    framer = ResponseFramer(b"PUT")
    assert framer.feed(b"HTTP/1.1 100 Continue\r\n\r\n") == (b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    assert framer.progress is Progress.MORE
    assert framer.feed(OK) == (OK, b"")
    assert framer.progress is Progress.ENDED


@pytest.mark.parametrize(
    ("method", "head"),
    [
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
        (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
    ids=["head", "204", "304"],
)
def test_no_body_follows_head_204_or_304(method: bytes, head: bytes) -> None:
    framer = ResponseFramer(method)
    assert framer.feed(head + OK) == (head, OK)
    assert framer.progress is Progress.ENDED


def test_a_101_after_an_upgrade_request_makes_everything_after_it_raw() -> None:
    framer = ResponseFramer(b"GET", upgrade=True)
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00"
    assert framer.feed(switch) == (switch, b"")
    assert framer.progress is Progress.SWITCHED
    assert framer.feed(b"more") == (b"more", b"")
    framer.feed(b"")  # EOF of a raw stream is no error


def test_a_101_without_an_upgrade_request_is_broken() -> None:
    with pytest.raises(ResponseBroken, match="101"):
        ResponseFramer(b"GET").feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")


def test_a_close_delimited_body_ends_at_eof_and_the_connection_does_not_persist() -> None:
    framer = ResponseFramer(b"GET")
    assert framer.feed(b"HTTP/1.1 200 OK\r\n\r\nsome") == (b"HTTP/1.1 200 OK\r\n\r\nsome", b"")
    assert framer.feed(b" more") == (b" more", b"")
    assert framer.progress is Progress.MORE
    framer.feed(b"")
    assert framer.progress is Progress.ENDED and not framer.keep_alive


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", True),  # bare LF, as h11 accepts
    ],
)
def test_persistence_follows_the_version_and_connection_header(
    head: bytes, keep_alive: bool
) -> None:
    framer = ResponseFramer(b"GET")
    assert framer.feed(head) == (head, b"")
    assert framer.progress is Progress.ENDED and framer.keep_alive is keep_alive


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"",
    ],
    ids=["short-length-body", "short-chunk", "partial-head", "nothing"],
)
def test_eof_before_the_end_is_broken(response: bytes) -> None:
    framer = ResponseFramer(b"GET")
    if response:
        framer.feed(response)
    with pytest.raises(ResponseBroken, match="closed"):
        framer.feed(b"")


@pytest.mark.parametrize(
    "response",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
        b"HTTP/1.1 099 Odd\r\n\r\n",
    ],
)
def test_malformed_responses_are_broken(response: bytes) -> None:
    with pytest.raises(ResponseBroken):
        ResponseFramer(b"GET").feed(response)


def test_an_endless_head_is_broken_once_over_the_bound() -> None:
    framer = ResponseFramer(b"GET")
    framer.feed(b"HTTP/1.1 200 OK\r\nX: ")
    with pytest.raises(ResponseBroken, match="over"):
        framer.feed(b"a" * (MAX_RESPONSE_HEAD + 1))


def test_repeated_content_lengths_that_agree_are_one_length() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n"
    framer = ResponseFramer(b"GET")
    assert framer.feed(head + b"ok!") == (head + b"ok", b"!")


def test_chunked_wins_over_content_length() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
    framer = ResponseFramer(b"GET")
    assert framer.feed(head + b"0\r\n\r\n") == (head + b"0\r\n\r\n", b"")
    assert framer.progress is Progress.ENDED


def test_the_chunk_writer_produces_what_h11_reads_back() -> None:
    wire = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire += chunk(b"hello ") + chunk(b"") + chunk(b"world") + last_chunk([(b"T-One", b"1")])
    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    body, trailers = b"", None
    while (event := server.next_event()) is not h11.NEED_DATA:
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            trailers = event.headers.raw_items()
            break
    assert body == b"hello world"
    assert trailers == [(b"T-One", b"1")]


# -- differential: the framer ends every response where h11 does ---------------------------


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bytes, bool]:
    """(method, response bytes, close-delimited) for a well-formed response."""
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    status = draw(st.sampled_from([200, 201, 204, 304, 404]))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    pieces = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4))
    interim = draw(st.booleans())
    close = draw(st.booleans())
    head = b"HTTP/1.1 %d X\r\n" % status
    if close:
        head += b"Connection: close\r\n"
    body = b"".join(pieces)
    no_body = method == b"HEAD" or status in (204, 304)
    if framing == "length":
        head += b"Content-Length: %d\r\n" % len(body)
        wire = body
    elif framing == "chunked":
        head += b"Transfer-Encoding: chunked\r\n"
        wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        wire = body
    response = head + b"\r\n" + (b"" if no_body else wire)
    if interim:
        response = b"HTTP/1.1 100 Continue\r\n\r\n" + response
    return method, response, framing == "close" and not no_body


def h11_end(method: bytes, response: bytes, eof: bool) -> tuple[int, bool]:
    """Where h11 ends the response, and whether it keeps the connection."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(response)
    if eof:
        conn.receive_data(b"")
    while not isinstance(conn.next_event(), h11.EndOfMessage):
        pass
    return len(response) - len(conn.trailing_data[0]), conn.their_state is h11.DONE


@settings(max_examples=300, deadline=None)
@given(case=responses(), cut=st.integers(min_value=0, max_value=400))
def test_the_framer_ends_every_response_where_h11_does(
    case: tuple[bytes, bytes, bool], cut: int
) -> None:
    method, response, close_delimited = case
    end, persistent = h11_end(method, response, close_delimited)
    framer = ResponseFramer(method)
    cut %= len(response) + 1
    pieces = [p for p in (response[:cut], response[cut:]) if p]  # b"" would be EOF
    released, beyond = feed_all(framer, pieces)
    if close_delimited:
        framer.feed(b"")
    assert framer.progress is Progress.ENDED
    assert (len(released), beyond) == (end, b"")
    # After a close-delimited body the upstream is gone whatever h11's state says.
    assert framer.keep_alive is (persistent and not close_delimited)
