"""Which way the proxy core drops an upstream: orderly after complete exchanges, a reset
for anything cut. No loop: the session's events are the whole story."""

from __future__ import annotations

from fluidity.protocol.proxy import ClientSession, CloseClient, CloseUpstream, State

GET = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def forwarding(request: bytes = GET) -> ClientSession:
    session = ClientSession()
    session.receive_client(request)
    session.upstream_opened()
    session.events()
    return session


def test_a_client_leaving_between_requests_drops_the_upstream_in_order() -> None:
    session = forwarding()
    session.receive_upstream(OK)
    session.events()
    session.receive_client(b"")
    assert session.events() == [CloseUpstream(orderly=True), CloseClient()]


def test_a_half_sent_next_request_head_cuts_nothing_upstream() -> None:
    """408 for the half head; the upstream's own exchange was complete."""
    session = forwarding()
    session.receive_upstream(OK)
    session.events()
    session.receive_client(b"GET http://example.com/2 HTT")
    session.head_timed_out()
    assert session.events()[-2:] == [CloseUpstream(orderly=True), CloseClient()]


def test_a_response_cut_by_the_origin_resets_the_upstream() -> None:
    session = forwarding()
    session.receive_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    session.events()
    session.receive_upstream(b"")  # seven bytes short
    assert session.events()[-2:] == [CloseUpstream(), CloseClient(abort=True)]


def test_a_request_body_still_on_its_way_is_a_cut() -> None:
    session = forwarding(
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: 9\r\n\r\nab"
    )
    session.receive_upstream(OK)  # answered before the body ended
    assert session.events()[-2:] == [CloseUpstream(orderly=False), CloseClient()]
    assert session.state is State.CLOSED
