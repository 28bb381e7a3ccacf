"""The agent's HTTP/1.1 proxy core, driven with byte strings: CONNECT, forwarding, keep-alive.

No event loop: each test feeds a ClientSession what a client and an upstream would
send, and checks the events it asks the driver to carry out.
"""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidity.protocol.proxy import (
    ClientSession,
    CloseClient,
    CloseUpstream,
    EndClient,
    EndUpstream,
    OpenUpstream,
    ProxyEvent,
    SendClient,
    SendUpstream,
    State,
)

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
GET = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def upstream_bytes(events: list[ProxyEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, SendUpstream))


def client_bytes(events: list[ProxyEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, SendClient))


def opened(session: ClientSession, request: bytes) -> list[ProxyEvent]:
    """Send ``request``, check it asks for an upstream, open it; the events after."""
    session.receive_client(request)
    assert isinstance(session.next_event(), OpenUpstream)
    session.upstream_opened()
    return session.events()


def decode_request(wire: bytes) -> tuple[h11.Request, bytes, list[tuple[bytes, bytes]]]:
    """Parse what the target received: (request, body, trailers)."""
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(wire)
    request, body, trailers = None, b"", []
    while (event := parser.next_event()) is not h11.NEED_DATA:
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            trailers = list(event.headers.raw_items())
            break
    assert request is not None
    return request, body, trailers


# -- CONNECT ----------------------------------------------------------------------------


def test_connect_opens_a_tunnel_then_sends_the_bytes_that_came_early() -> None:
    session = ClientSession()
    session.receive_client(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    session.receive_client(b"\x16\x03\x01early hello")
    assert session.events() == [OpenUpstream("example.com", 443, "connect")]
    assert not session.wants_client_data  # OPENING: the driver stops reading the client

    session.upstream_opened()

    assert session.events() == [SendClient(ESTABLISHED), SendUpstream(b"\x16\x03\x01early hello")]
    assert session.state is State.RAW


def test_connect_splices_both_ways_with_half_closes_until_both_end() -> None:
    session = ClientSession()
    opened(session, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")

    session.receive_client(b"client hello")
    session.receive_upstream(b"server hello")
    session.receive_client(b"")
    assert session.events() == [
        SendUpstream(b"client hello"),
        SendClient(b"server hello"),
        EndUpstream(),
    ]
    session.receive_upstream(b"last words")
    session.receive_upstream(b"")
    assert session.events() == [SendClient(b"last words"), EndClient(), CloseClient()]
    assert session.state is State.CLOSED


def test_connect_to_an_ipv6_literal_names_the_bare_address() -> None:
    session = ClientSession()
    session.receive_client(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n")
    assert session.events() == [OpenUpstream("2001:db8::1", 8443, "connect")]


def test_a_client_eof_before_the_tunnel_opens_is_passed_on_after_it() -> None:
    session = ClientSession()
    session.receive_client(b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\nbye")
    session.receive_client(b"")
    session.events()
    session.upstream_opened()
    assert session.events() == [SendClient(ESTABLISHED), SendUpstream(b"bye"), EndUpstream()]


# -- forwarding: the request --------------------------------------------------------------


def test_a_get_is_rewritten_to_origin_form_with_every_other_header_as_sent() -> None:
    request = (
        b"GET http://example.com/path/x.html?q=1&r=%20 HTTP/1.1\r\n"
        b"X-CuStOm: One\r\n"
        b"Host: example.com\r\n"
        b"Proxy-Connection: Keep-Alive\r\n"
        b"accept: text/html\r\n"
        b"PROXY-AUTHORIZATION: Basic Zm9vOmJhcg==\r\n"
        b"Cookie: a=1\r\n"
        b"X-CuStOm: Two\r\n"
        b"\r\n"
    )
    session = ClientSession()
    session.receive_client(request)
    assert session.events() == [OpenUpstream("example.com", 80, "forward")]
    session.upstream_opened()
    assert session.events() == [
        SendUpstream(
            b"GET /path/x.html?q=1&r=%20 HTTP/1.1\r\n"
            b"X-CuStOm: One\r\n"
            b"Host: example.com\r\n"
            b"accept: text/html\r\n"
            b"Cookie: a=1\r\n"
            b"X-CuStOm: Two\r\n"
            b"\r\n"
        )
    ]
    assert session.state is State.FORWARDING
    assert session.request_complete


@pytest.mark.parametrize(
    "method",
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"BREW"],
)
def test_every_method_is_forwarded_including_extension_methods(method: bytes) -> None:
    session = ClientSession()
    request = b"%s http://pot.example:8080/coffee HTTP/1.1\r\nHost: pot.example\r\n\r\n" % method
    session.receive_client(request)
    assert session.events() == [OpenUpstream("pot.example", 8080, "forward")]
    session.upstream_opened()
    assert upstream_bytes(session.events()) == (
        b"%s /coffee HTTP/1.1\r\nHost: pot.example\r\n\r\n" % method
    )


def test_a_content_length_body_streams_as_it_arrives() -> None:
    session = ClientSession()
    head = b"POST http://example.com/up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\n"
    events = opened(session, head + b"hel")
    assert events == [SendUpstream(head.replace(b"http://example.com", b"")), SendUpstream(b"hel")]
    session.receive_client(b"lo wor")
    assert session.events() == [SendUpstream(b"lo wor")]
    assert not session.request_complete
    session.receive_client(b"ld")
    assert session.events() == [SendUpstream(b"ld")]
    assert session.request_complete


def test_a_chunked_body_with_a_trailer_arrives_intact_when_fed_a_byte_at_a_time() -> None:
    body = (
        b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Checksum: abc\r\n\r\n"
    )
    head = (
        b"POST http://example.com/wiki HTTP/1.1\r\nHost: example.com\r\n"
        b"Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
    )
    session = ClientSession()
    wire = upstream_bytes(opened(session, head))
    for byte in body:
        session.receive_client(bytes([byte]))
        wire += upstream_bytes(session.events())

    request, received, trailers = decode_request(wire)
    assert request.target == b"/wiki"
    assert (b"transfer-encoding", b"chunked") in list(request.headers)
    assert received == b"Wikipedia in\r\n\r\nchunks."
    assert trailers == [(b"X-Checksum", b"abc")]
    assert session.request_complete


def test_a_body_sent_with_the_head_waits_for_the_upstream_then_follows_the_head() -> None:
    session = ClientSession()
    session.receive_client(
        b"PUT http://example.com/f HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n\r\ndata"
    )
    assert session.events() == [OpenUpstream("example.com", 80, "forward")]
    session.upstream_opened()
    assert upstream_bytes(session.events()).endswith(b"\r\n\r\ndata")


# -- forwarding: the response -------------------------------------------------------------


def test_the_response_reaches_the_client_as_the_raw_bytes_the_origin_sent() -> None:
    session = ClientSession()
    opened(session, GET)
    response = b"HTTP/1.1 200 Fine\r\nSeT-CoOkIe: a=1\r\nContent-Length: 5\r\n\r\nhello"
    session.receive_upstream(response[:30])
    session.receive_upstream(response[30:])
    assert client_bytes(session.events()) == response
    assert session.state is State.IDLE


def test_a_head_response_with_a_length_but_no_body_ends_at_its_head() -> None:
    session = ClientSession()
    opened(session, b"HEAD http://example.com/big HTTP/1.1\r\nHost: example.com\r\n\r\n")
    session.receive_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    assert session.events() == [SendClient(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")]
    assert session.state is State.IDLE


def test_a_204_response_ends_at_its_head() -> None:
    session = ClientSession()
    opened(session, b"DELETE http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    session.receive_upstream(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert session.events() == [SendClient(b"HTTP/1.1 204 No Content\r\n\r\n")]
    assert session.state is State.IDLE


def test_100_continue_passes_through_then_the_body_then_the_final_answer() -> None:
    session = ClientSession()
    head = (
        b"POST http://example.com/up HTTP/1.1\r\nHost: example.com\r\n"
        b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    opened(session, head)
    session.receive_upstream(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert session.events() == [SendClient(b"HTTP/1.1 100 Continue\r\n\r\n")]
    session.receive_client(b"hello")
    assert session.events() == [SendUpstream(b"hello")]
    session.receive_upstream(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert session.events() == [SendClient(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")]
    assert session.state is State.IDLE


def test_a_close_delimited_response_ends_at_upstream_eof_and_closes_the_client() -> None:
    session = ClientSession()
    opened(session, GET)
    session.receive_upstream(b"HTTP/1.1 200 OK\r\n\r\nstreamed ")
    session.receive_upstream(b"until close")
    assert client_bytes(session.events()) == b"HTTP/1.1 200 OK\r\n\r\nstreamed until close"
    session.receive_upstream(b"")
    assert session.events() == [CloseUpstream(orderly=True), CloseClient()]


def test_the_response_may_start_before_the_request_body_ends() -> None:
    session = ClientSession()
    opened(
        session,
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: 6\r\n\r\nabc",
    )
    session.receive_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    session.receive_client(b"def")
    session.receive_upstream(b"3\r\ndef\r\n0\r\n\r\n")
    assert session.events() == [
        SendClient(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"),
        SendUpstream(b"def"),
        SendClient(b"3\r\ndef\r\n0\r\n\r\n"),
    ]
    assert session.state is State.IDLE


def test_an_answer_before_the_request_body_ended_closes_both_after_it() -> None:
    session = ClientSession()
    opened(
        session,
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: 999\r\n\r\nab",
    )
    too_large = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n"
    session.receive_upstream(too_large)
    assert session.events() == [SendClient(too_large), CloseUpstream(), CloseClient()]


def test_bytes_the_origin_sends_beyond_the_response_are_dropped_and_spoil_the_upstream() -> None:
    session = ClientSession()
    opened(session, GET)
    session.receive_upstream(OK + b"junk")
    assert session.events() == [SendClient(OK), CloseUpstream(orderly=True)]
    session.receive_client(GET)
    assert session.events() == [OpenUpstream("example.com", 80, "forward")]


# -- keep-alive and pipelining --------------------------------------------------------------


def test_a_second_request_to_the_same_target_reuses_the_upstream() -> None:
    session = ClientSession()
    opened(session, GET)
    session.receive_upstream(OK)
    session.events()
    session.receive_client(b"GET http://example.com/two HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert session.events() == [SendUpstream(b"GET /two HTTP/1.1\r\nHost: example.com\r\n\r\n")]
    session.receive_upstream(OK)
    assert session.events() == [SendClient(OK)]


def test_a_request_to_another_target_closes_the_upstream_and_opens_a_new_one() -> None:
    session = ClientSession()
    opened(session, GET)
    session.receive_upstream(OK)
    session.events()
    session.receive_client(b"GET http://other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert session.events() == [
        CloseUpstream(orderly=True),
        OpenUpstream("other.example", 80, "forward"),
    ]


def test_pipelined_requests_in_one_chunk_are_served_in_turn() -> None:
    session = ClientSession()
    second = b"GET http://example.com/2 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    third = b"GET http://example.com/3 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    events = opened(session, GET + second + third)
    assert upstream_bytes(events) == b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    session.receive_upstream(OK)
    assert session.events() == [
        SendClient(OK),
        SendUpstream(b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    ]
    session.receive_upstream(OK)
    assert session.events() == [
        SendClient(OK),
        SendUpstream(b"GET /3 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    ]


def test_an_http_1_0_client_gets_its_answer_then_the_connection_closes() -> None:
    session = ClientSession()
    events = opened(session, b"GET http://example.com/old HTTP/1.0\r\nUser-Agent: old\r\n\r\n")
    assert upstream_bytes(events) == b"GET /old HTTP/1.0\r\nUser-Agent: old\r\n\r\n"
    session.receive_upstream(OK)
    assert session.events() == [SendClient(OK), CloseUpstream(orderly=True), CloseClient()]


def test_connection_close_from_the_client_closes_after_the_response() -> None:
    session = ClientSession()
    opened(
        session,
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    session.receive_upstream(OK)
    assert session.events() == [SendClient(OK), CloseUpstream(orderly=True), CloseClient()]


def test_connection_close_from_the_origin_closes_the_client_after_the_response() -> None:
    session = ClientSession()
    opened(session, GET)
    response = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    session.receive_upstream(response)
    assert session.events() == [SendClient(response), CloseUpstream(orderly=True), CloseClient()]


def test_a_clean_client_close_between_requests_closes_quietly() -> None:
    session = ClientSession()
    opened(session, GET)
    session.receive_upstream(OK)
    session.receive_client(b"")
    assert session.events() == [SendClient(OK), CloseUpstream(orderly=True), CloseClient()]


# -- upgrades ----------------------------------------------------------------------------------

UPGRADE = (
    b"GET http://chat.example/ws HTTP/1.1\r\nHost: chat.example\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def test_a_101_answer_to_an_upgrade_turns_the_session_into_raw_splicing() -> None:
    session = ClientSession()
    events = opened(session, UPGRADE)
    assert upstream_bytes(events) == UPGRADE.replace(b"http://chat.example", b"")
    session.receive_client(b"\x81\x85early")  # a frame sent before the 101 arrived
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    session.receive_upstream(switching + b"\x81\x02hi")
    assert session.events() == [
        SendClient(switching + b"\x81\x02hi"),
        SendUpstream(b"\x81\x85early"),
    ]
    assert session.state is State.RAW

    session.receive_client(b"\x88\x00")
    session.receive_upstream(b"\x88\x00")
    assert session.events() == [SendUpstream(b"\x88\x00"), SendClient(b"\x88\x00")]


def test_an_upgrade_answered_without_101_is_an_ordinary_exchange() -> None:
    session = ClientSession()
    opened(session, UPGRADE)
    refusal = b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope"
    session.receive_upstream(refusal)
    assert session.events() == [SendClient(refusal)]
    assert session.state is State.IDLE
    session.receive_client(b"GET http://chat.example/ HTTP/1.1\r\nHost: chat.example\r\n\r\n")
    assert session.events() == [SendUpstream(b"GET / HTTP/1.1\r\nHost: chat.example\r\n\r\n")]


# -- however the bytes are split -------------------------------------------------------------


# Deterministic runs: the same splits every time, no example database on disk.
SPLITS = settings(max_examples=200, deadline=None, derandomize=True, database=None)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


BODY = bytes(range(256)) * 3
POST = (
    b"POST http://example.com/data?x=1 HTTP/1.1\r\nHost: example.com\r\n"
    b"Content-Length: %d\r\nX-Odd: CaSe\r\n\r\n" % len(BODY)
) + BODY


def deliver(session: ClientSession, pieces: list[bytes]) -> bytes:
    """Feed the client's pieces, opening the upstream when asked; what went upstream.

    Pieces that arrive while the upstream opens are fed anyway: they stand for bytes
    the driver had already read.
    """
    wire = b""
    for piece in pieces:
        session.receive_client(piece)
        if session.state is not State.OPENING:
            wire += upstream_bytes(session.events())
    if session.state is State.OPENING:
        session.upstream_opened()
    return wire + upstream_bytes(session.events())


@SPLITS
@given(st.lists(st.integers(min_value=0), max_size=20))
def test_the_upstream_receives_identical_bytes_however_the_request_is_split(
    cuts: list[int],
) -> None:
    session = ClientSession()
    wire = deliver(session, split_at(POST, cuts))
    assert wire == POST.replace(b"http://example.com", b"", 1)
    assert session.request_complete


CHUNKED = (
    b"POST http://example.com/c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"10\r\n0123456789abcdef\r\n3\r\nxyz\r\n0\r\nX-Sum: 7\r\n\r\n"
)


@SPLITS
@given(st.lists(st.integers(min_value=0), max_size=20))
def test_a_chunked_body_arrives_whole_however_it_is_split(cuts: list[int]) -> None:
    session = ClientSession()
    request, body, trailers = decode_request(deliver(session, split_at(CHUNKED, cuts)))
    assert session.request_complete
    assert (request.method, request.target) == (b"POST", b"/c")
    assert (body, trailers) == (b"0123456789abcdefxyz", [(b"X-Sum", b"7")])


RESPONSE = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"


@SPLITS
@given(st.lists(st.integers(min_value=0), max_size=20))
def test_the_client_receives_exactly_the_response_however_it_is_split(cuts: list[int]) -> None:
    session = ClientSession()
    opened(session, GET)
    for piece in split_at(RESPONSE + b"GARBAGE", cuts):
        session.receive_upstream(piece)
    events = session.events()
    assert client_bytes(events) == RESPONSE
    assert session.state is State.IDLE


# -- an h11 client and an h11 origin, talking through the session -----------------------------


def wire(conn: h11.Connection, *events: h11.Event) -> bytes:
    return b"".join(conn.send(event) or b"" for event in events)


def test_an_h11_client_and_origin_hold_a_keep_alive_conversation_through_the_session() -> None:
    client, origin = h11.Connection(h11.CLIENT), h11.Connection(h11.SERVER)
    session = ClientSession()
    opens: list[OpenUpstream] = []

    def carry() -> None:  # move bytes until nothing moves: the _xfer_once idiom, bounded
        for _ in range(20):
            events = session.events()
            if not events:
                return
            for event in events:
                match event:
                    case OpenUpstream():
                        opens.append(event)
                        session.upstream_opened()
                    case SendUpstream(data):
                        origin.receive_data(data)
                    case SendClient(data):
                        client.receive_data(data)
        raise AssertionError("the session kept talking")

    def origin_answers(body: bytes) -> None:
        request = origin.next_event()
        assert isinstance(request, h11.Request)
        received = b""
        while not isinstance(event := origin.next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data)
            received += event.data
        head = h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])
        echo = h11.Data(data=request.target + b" got " + received)
        session.receive_upstream(wire(origin, head, echo, h11.Data(data=body), h11.EndOfMessage()))
        origin.start_next_cycle()

    def client_reads() -> bytes:
        assert isinstance(client.next_event(), h11.Response)
        body = b""
        while not isinstance(event := client.next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data)
            body += event.data
        client.start_next_cycle()
        return body

    for path, payload in [(b"/one", b"first"), (b"/two", b"second")]:
        head = h11.Request(
            method="POST",
            target=b"http://example.com" + path,
            headers=[("Host", "example.com"), ("Transfer-Encoding", "chunked")],
        )
        session.receive_client(wire(client, head, h11.Data(data=payload)))
        session.receive_client(wire(client, h11.EndOfMessage()))
        carry()
        origin_answers(b"!")
        carry()
        assert client_reads() == path + b" got " + payload + b"!"
    assert opens == [OpenUpstream("example.com", 80, "forward")]  # the upstream was reused
