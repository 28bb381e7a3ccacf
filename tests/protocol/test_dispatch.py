"""One port, two protocols: the first byte picks HTTP or SOCKS5; the SOCKS5 relay, loop-free."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidity.protocol.dispatch import DriverSession, FirstByteSession, SocksRelay
from fluidity.protocol.proxy import ClientSession
from fluidity.protocol.proxyevents import (
    CloseClient,
    EndClient,
    EndUpstream,
    OpenUpstream,
    ProxyEvent,
    ProxyStateError,
    SendClient,
    SendUpstream,
)
from fluidity.protocol.socks import MAX_EARLY_DATA, Reply, encode_reply

GREETING = b"\x05\x01\x00"
REQUEST = b"\x05\x01\x00\x03\x0bexample.com" + struct.pack("!H", 443)
SUCCESS = encode_reply(Reply.SUCCEEDED)


def drain(session: DriverSession) -> list[ProxyEvent]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def first_byte_session(credentials: tuple[str, str] | None = None) -> FirstByteSession:
    return FirstByteSession(
        http=lambda: ClientSession(credentials=credentials),
        socks=lambda: SocksRelay(credentials),
    )


def relaying() -> SocksRelay:
    relay = SocksRelay()
    relay.receive_client(GREETING + REQUEST)
    relay.upstream_opened()
    assert drain(relay) == [
        SendClient(b"\x05\x00"),
        OpenUpstream("example.com", 443, kind="socks"),
        SendClient(SUCCESS),
    ]
    return relay


# -- choosing by the first byte -------------------------------------------------------


def test_a_socks5_greeting_makes_a_socks_session() -> None:
    session = first_byte_session()
    assert session.wants_client_data and session.next_event() is None
    session.receive_client(GREETING)
    assert isinstance(session.inner, SocksRelay)
    assert drain(session) == [SendClient(b"\x05\x00")]


def test_an_http_request_makes_an_http_session() -> None:
    session = first_byte_session()
    session.receive_client(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert isinstance(session.inner, ClientSession)
    assert drain(session) == [OpenUpstream("example.com", 443, kind="connect")]
    session.upstream_opened()
    assert drain(session) == [SendClient(b"HTTP/1.1 200 Connection established\r\n\r\n")]


def test_the_choice_holds_for_the_whole_connection() -> None:
    session = first_byte_session()
    session.receive_client(b"\x05")  # a greeting split after its first byte
    session.receive_client(b"\x01\x00")
    assert drain(session) == [SendClient(b"\x05\x00")]
    session.receive_client(REQUEST)
    assert drain(session) == [OpenUpstream("example.com", 443, kind="socks")]


def test_an_eof_before_any_byte_closes_quietly() -> None:
    session = first_byte_session()
    session.receive_client(b"")
    assert drain(session) == [CloseClient()]


def test_a_silent_client_gets_the_http_408() -> None:
    session = first_byte_session()
    session.head_timed_out()
    [answer, close] = drain(session)
    assert isinstance(answer, SendClient) and answer.data.startswith(b"HTTP/1.1 408 ")
    assert close == CloseClient()


def test_upstream_calls_before_the_first_byte_are_driver_bugs() -> None:
    session = first_byte_session()
    assert session.replayable_request() is None
    session.receive_upstream(b"ignored")
    session.upstream_lost("ignored")
    for call in (session.upstream_opened, session.retry_upstream):
        with pytest.raises(ProxyStateError, match="before the client sent anything"):
            call()
    with pytest.raises(ProxyStateError):
        session.upstream_failed(502, "x")


def test_socks5_uses_the_agent_credentials() -> None:
    session = first_byte_session(("me", "s3cret"))
    session.receive_client(b"\x05\x02\x00\x02")
    assert drain(session) == [SendClient(b"\x05\x02")]
    session.receive_client(b"\x01\x02me\x06s3cret" + REQUEST)
    assert drain(session) == [
        SendClient(b"\x01\x00"),
        OpenUpstream("example.com", 443, kind="socks"),
    ]


# -- the SOCKS5 relay -----------------------------------------------------------------


def test_the_client_is_not_read_while_the_upstream_opens() -> None:
    relay = SocksRelay()
    assert relay.wants_client_data
    relay.receive_client(GREETING + REQUEST)
    assert not relay.wants_client_data
    relay.upstream_opened()
    assert relay.wants_client_data


def test_bytes_flow_both_ways_and_both_ends_close_the_client() -> None:
    relay = relaying()
    relay.receive_client(b"ping")
    relay.receive_upstream(b"pong")
    assert drain(relay) == [SendUpstream(b"ping"), SendClient(b"pong")]
    relay.receive_upstream(b"")
    assert drain(relay) == [EndClient()]
    relay.receive_client(b"")
    assert drain(relay) == [EndUpstream(), CloseClient()]
    assert not relay.wants_client_data


def test_the_client_ending_first_then_the_upstream() -> None:
    relay = relaying()
    relay.receive_client(b"")
    relay.receive_upstream(b"last words")
    relay.receive_upstream(b"")
    assert drain(relay) == [EndUpstream(), SendClient(b"last words"), EndClient(), CloseClient()]


def test_a_client_that_half_closed_while_connecting() -> None:
    relay = SocksRelay()
    relay.receive_client(GREETING + REQUEST + b"early")
    relay.receive_client(b"")
    relay.upstream_opened()
    relay.receive_upstream(b"")
    assert drain(relay)[2:] == [
        SendClient(SUCCESS),
        SendUpstream(b"early"),
        EndUpstream(),
        EndClient(),
        CloseClient(),
    ]


def test_a_lost_upstream_resets_the_client() -> None:
    relay = relaying()
    relay.upstream_lost("stream reset by server")
    assert drain(relay) == [CloseClient(abort=True)]
    relay.receive_upstream(b"late")
    relay.upstream_lost("again")
    assert drain(relay) == []


def test_a_failed_upstream_answers_the_mapped_reply() -> None:
    relay = SocksRelay()
    relay.receive_client(GREETING + REQUEST)
    drain(relay)
    relay.upstream_failed(403, "policy")
    assert drain(relay) == [SendClient(encode_reply(Reply.NOT_ALLOWED)), CloseClient()]


def test_nothing_follows_the_close_of_a_client_that_sent_too_much_early() -> None:
    relay = SocksRelay()
    relay.receive_client(GREETING + REQUEST)
    relay.receive_client(b"x" * (MAX_EARLY_DATA + 1))
    assert drain(relay)[-1] == CloseClient()
    relay.upstream_opened()  # the driver drops this upstream along with the client
    relay.receive_upstream(b"late")
    assert drain(relay) == []


def test_a_stalled_handshake_is_closed_but_a_relay_is_not() -> None:
    relay = SocksRelay()
    relay.receive_client(b"\x05\x01")
    relay.head_timed_out()
    assert drain(relay) == [CloseClient()]
    relay = relaying()
    relay.head_timed_out()
    assert drain(relay) == []


def test_socks_is_never_replayed() -> None:
    relay = relaying()
    assert relay.replayable_request() is None
    with pytest.raises(ProxyStateError, match="never replayed"):
        relay.retry_upstream()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8), st.sampled_from(["open", "fail", "lost"]))
def test_close_client_is_always_the_last_event(chunks: list[bytes], fate: str) -> None:
    relay = SocksRelay()
    events: list[ProxyEvent] = []
    for chunk in chunks:
        relay.receive_client(chunk)
        events += drain(relay)
    if any(isinstance(e, OpenUpstream) for e in events):
        if fate == "fail":
            relay.upstream_failed(502, "refused")
        else:
            relay.upstream_opened()
            if fate == "lost":
                relay.upstream_lost("gone")
    relay.receive_upstream(b"")
    relay.receive_client(b"")
    events += drain(relay)
    closes = [i for i, e in enumerate(events) if isinstance(e, CloseClient)]
    assert len(closes) <= 1
    if closes:
        assert closes[0] == len(events) - 1


# -- relaying: when the driver may move bytes itself -------------------------------------


def test_relaying_means_bytes_would_come_straight_back_as_sends() -> None:
    assert not first_byte_session().relaying  # nothing chosen yet
    http = first_byte_session()
    http.receive_client(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    drain(http)
    assert not http.relaying  # still opening
    http.upstream_opened()
    drain(http)
    assert http.relaying
    http.receive_client(b"tls bytes")
    http.receive_upstream(b"tls answer")
    assert drain(http) == [SendUpstream(b"tls bytes"), SendClient(b"tls answer")]


def test_a_forwarding_http_session_is_not_relaying() -> None:
    http = first_byte_session()
    http.receive_client(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    http.upstream_opened()
    drain(http)
    assert not http.relaying  # responses are parsed: bytes may be held or cut


def test_a_socks_relay_is_relaying_until_it_closes() -> None:
    relay = relaying()
    assert relay.relaying
    relay.upstream_lost("cut")
    assert drain(relay) == [CloseClient(abort=True)]
    assert not relay.relaying
