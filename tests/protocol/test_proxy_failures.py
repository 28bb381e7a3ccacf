"""The proxy core when things go wrong: broken upstreams, replays, hostile clients, auth.

No event loop: byte strings in, events out.
"""

from __future__ import annotations

import base64

import pytest

from fluidity.errors import ProxyProtocolError
from fluidity.protocol.proxy import (
    ClientSession,
    CloseClient,
    CloseUpstream,
    LocalRequest,
    LocalResponse,
    OpenUpstream,
    ProxyEvent,
    ProxyStateError,
    SendClient,
    SendUpstream,
    State,
)

GET = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
GET_ORIGIN_FORM = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"


def error(status: bytes, reason: bytes, *extra: bytes) -> bytes:
    body = reason + b"\n"
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n"
        % len(body)
        + b"".join(line + b"\r\n" for line in extra)
        + b"\r\n"
        + body
    )


def answer_of(events: list[ProxyEvent]) -> bytes:
    """The one response the session sent the client, checking it then closed."""
    assert events[-1] == CloseClient()
    sent = [e.data for e in events if isinstance(e, SendClient)]
    assert len(sent) == 1
    return sent[0]


def status_of(events: list[ProxyEvent]) -> int:
    return int(answer_of(events).split(b" ", 2)[1])


def refused(request: bytes, **session_args: object) -> list[ProxyEvent]:
    session = ClientSession(**session_args)  # type: ignore[arg-type]
    session.receive_client(request)
    events = session.events()
    assert not any(isinstance(e, OpenUpstream) for e in events)
    assert session.state is State.CLOSED
    return events


def forwarding(request: bytes = GET) -> ClientSession:
    session = ClientSession()
    session.receive_client(request)
    session.upstream_opened()
    session.events()
    return session


# -- the upstream cannot be had, or breaks ------------------------------------------------


def test_a_refused_connect_gets_the_status_and_reason_then_a_close() -> None:
    session = ClientSession()
    session.receive_client(CONNECT)
    session.events()
    session.upstream_failed(403, "policy refused example.com:443: private address")
    assert session.events() == [
        SendClient(error(b"403 Forbidden", b"policy refused example.com:443: private address")),
        CloseClient(),
    ]


def test_a_refused_forward_request_gets_the_error_with_connection_close() -> None:
    session = ClientSession()
    session.receive_client(GET + GET)
    session.events()
    session.upstream_failed(504, "connect to example.com:80 timed out")
    events = session.events()
    assert answer_of(events) == error(
        b"504 Gateway Timeout", b"connect to example.com:80 timed out"
    )


def test_an_upstream_lost_before_any_response_byte_is_a_502() -> None:
    session = forwarding()
    session.upstream_lost("stream reset by the server")
    events = session.events()
    assert status_of(events) == 502
    assert b"stream reset by the server" in answer_of(events)
    assert CloseUpstream() not in events  # the driver knows it is gone


def test_an_upstream_lost_during_the_response_aborts_the_client() -> None:
    session = forwarding()
    session.receive_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    session.events()
    assert session.response_started
    session.upstream_lost("tunnel closed")
    assert session.events() == [CloseClient(abort=True)]


def test_an_upstream_lost_in_a_tunnel_aborts_the_client() -> None:
    session = ClientSession()
    session.receive_client(CONNECT)
    session.upstream_opened()
    session.events()
    session.upstream_lost("tunnel closed")
    assert session.events() == [CloseClient(abort=True)]


def test_an_upstream_eof_inside_a_length_delimited_body_aborts_the_client() -> None:
    session = forwarding()
    session.receive_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
    session.receive_upstream(b"")
    events = session.events()
    assert events[-2:] == [CloseUpstream(), CloseClient(abort=True)]


def test_an_upstream_eof_inside_a_chunked_body_aborts_the_client() -> None:
    session = forwarding()
    session.receive_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    session.receive_upstream(b"")
    assert session.events()[-1] == CloseClient(abort=True)


def test_an_origin_that_does_not_speak_http_gets_a_502() -> None:
    session = forwarding()
    session.receive_upstream(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert session.events() == []  # not a complete response head: nothing reaches the client
    session.receive_upstream(b"")
    events = session.events()
    assert status_of(events) == 502
    assert b"closed the connection" in answer_of(events)


def test_a_malformed_response_head_gets_a_502() -> None:
    session = forwarding()
    session.receive_upstream(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")
    events = session.events()
    assert status_of(events) == 502
    assert b"invalid response" in answer_of(events)


def test_a_response_head_reaches_the_client_only_once_it_is_complete() -> None:
    session = forwarding()
    session.receive_upstream(b"HTTP/1.1 200 OK\r\nContent-Le")
    assert session.events() == []
    assert not session.response_started
    session.receive_upstream(b"ngth: 2\r\n\r\no")
    assert session.events() == [SendClient(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no")]
    assert session.response_started


def test_an_upstream_eof_before_any_response_is_a_502() -> None:
    session = forwarding()
    session.receive_upstream(b"")
    assert status_of(session.events()) == 502


# -- replaying a request once --------------------------------------------------------------


def test_a_complete_get_is_replayable_as_the_rewritten_bytes() -> None:
    session = forwarding()
    assert session.replayable_request() == GET_ORIGIN_FORM


def test_a_put_with_a_body_is_replayable_in_full() -> None:
    request = (
        b"PUT http://example.com/f HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert forwarding(request).replayable_request() == request.replace(b"http://example.com", b"")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\n\r\nx",
        b"PATCH http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"PUT http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: 9\r\n\r\nhalf",
        b"PUT http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: 70000\r\n\r\n"
        + b"x" * 70000,
    ],
    ids=["post", "patch", "incomplete", "over-64KiB"],
)
def test_requests_that_are_not_idempotent_complete_or_small_are_not_replayable(
    request_bytes: bytes,
) -> None:
    assert forwarding(request_bytes).replayable_request() is None


def test_no_replay_once_a_response_byte_reached_the_client() -> None:
    session = forwarding()
    session.receive_upstream(b"HTTP/1.1 200")  # an incomplete head is held back
    assert session.replayable_request() == GET_ORIGIN_FORM
    session.receive_upstream(b" OK\r\nContent-Length: 9\r\n\r\n")
    assert session.replayable_request() is None


def test_retry_opens_a_new_upstream_and_replays_the_request_once() -> None:
    session = forwarding()
    session.retry_upstream()
    assert session.events() == [OpenUpstream("example.com", 80, "forward")]
    assert session.replayable_request() is None  # one retry only
    session.upstream_opened()
    assert session.events() == [SendUpstream(GET_ORIGIN_FORM)]
    session.receive_upstream(OK)
    assert session.events() == [SendClient(OK)]
    assert session.state is State.IDLE


def test_retry_of_a_request_that_cannot_be_replayed_is_refused() -> None:
    session = forwarding(b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    with pytest.raises(ProxyStateError, match="upstream_lost"):
        session.retry_upstream()


def test_a_reused_upstream_that_closes_before_answering_is_replaced_and_replayed() -> None:
    session = forwarding()
    session.receive_upstream(OK)
    session.receive_client(b"GET http://example.com/2 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    session.events()
    session.receive_upstream(b"")  # the origin's idle timeout crossed our request
    assert session.events() == [CloseUpstream(), OpenUpstream("example.com", 80, "forward")]
    session.upstream_opened()
    assert session.events() == [
        SendUpstream(b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    ]


def test_an_idle_kept_alive_upstream_that_closes_is_let_go() -> None:
    session = forwarding()
    session.receive_upstream(OK)
    session.events()
    session.receive_upstream(b"")
    assert session.events() == [CloseUpstream(orderly=True)]
    session.receive_client(GET)
    assert session.events() == [OpenUpstream("example.com", 80, "forward")]


# -- hostile or confused clients -----------------------------------------------------------


def test_a_head_over_64_kib_gets_431() -> None:
    head = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nX-Big: " + b"a" * 70_000
    assert status_of(refused(head)) == 431


def test_a_head_over_64_kib_gets_431_even_when_it_arrives_whole() -> None:
    cookies = b"".join(b"Cookie: c%d=%s\r\n" % (i, b"v" * 1000) for i in range(70))
    head = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n" + cookies + b"\r\n"
    assert status_of(refused(head)) == 431


def test_a_request_framed_two_ways_is_refused_as_a_smuggling_attempt() -> None:
    request = (
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    events = refused(request)
    assert status_of(events) == 400
    assert b"only one" in answer_of(events)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nno colon here\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\n\r\n",
    ],
    ids=["tls-to-plain-port", "no-request-line", "bad-header", "http11-without-host"],
)
def test_garbage_gets_400(garbage: bytes) -> None:
    events = refused(garbage)
    assert status_of(events) == 400
    assert b"malformed request" in answer_of(events)


def test_a_transfer_coding_other_than_chunked_gets_501() -> None:
    request = (
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n"
    )
    events = refused(request)
    assert status_of(events) == 501
    assert b"chunked" in answer_of(events)


def test_an_unknown_http_version_gets_505() -> None:
    assert (
        status_of(refused(b"GET http://example.com/ HTTP/2.0\r\nHost: example.com\r\n\r\n")) == 505
    )


@pytest.mark.parametrize(
    "authority",
    [
        b"example.com",
        b"example.com:0",
        b"example.com:65536",
        b"example.com:",
        b":443",
        b"user:pw@example.com:443",
        b"example.com:443/path",
        b"example.com:https",
        b"[::1:443",
        b"::1:443",
        b"http://example.com:443",
    ],
)
def test_connect_to_a_malformed_authority_gets_400_and_no_upstream(authority: bytes) -> None:
    events = refused(b"CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n" % authority)
    assert status_of(events) == 400
    assert answer_of(events).endswith(b"\n")


def test_a_connect_with_a_body_gets_400() -> None:
    events = refused(b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert b"carries no body" in answer_of(events)


def test_an_origin_form_request_is_told_this_is_a_proxy() -> None:
    events = refused(GET_ORIGIN_FORM)
    assert answer_of(events) == error(
        b"400 Bad Request", b"this is a proxy: send absolute-form requests or CONNECT"
    )


def test_an_https_url_is_told_to_use_connect() -> None:
    events = refused(b"GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert status_of(events) == 400
    assert b"CONNECT" in answer_of(events)


def test_a_bad_chunk_in_a_request_body_gets_400_and_closes_the_upstream() -> None:
    session = forwarding(
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    session.receive_client(b"zz\r\n")
    events = session.events()
    assert status_of(events) == 400
    assert events[-2:] == [CloseUpstream(), CloseClient()]


def test_a_slow_client_gets_408_unless_its_head_is_complete() -> None:
    idle = ClientSession()
    idle.receive_client(b"GET http://example.com/ HTTP/1.1\r\nHost: exa")
    idle.head_timed_out()
    assert status_of(idle.events()) == 408

    busy = forwarding()
    busy.head_timed_out()
    assert busy.events() == []
    assert busy.state is State.FORWARDING


def test_an_idle_kept_alive_connection_is_closed_quietly_at_the_head_timeout() -> None:
    session = forwarding()
    session.receive_upstream(OK)
    session.events()
    assert session.state is State.IDLE
    session.head_timed_out()
    assert session.events() == [CloseUpstream(orderly=True), CloseClient()]
    assert session.state is State.CLOSED


def test_a_next_head_begun_on_a_kept_alive_connection_gets_408() -> None:
    session = forwarding()
    session.receive_upstream(OK)
    session.receive_client(b"GET http://example.com/two HTTP/1.1\r\nHo")
    session.events()
    session.head_timed_out()
    assert status_of(session.events()) == 408


def test_a_connection_that_never_sent_a_request_gets_408() -> None:
    session = ClientSession()
    session.head_timed_out()
    assert status_of(session.events()) == 408


def test_empty_lines_before_a_request_are_ignored() -> None:
    session = ClientSession()
    session.receive_client(b"\r\n\r\n" + GET)
    assert session.events() == [OpenUpstream("example.com", 80, "forward")]


# -- local paths -------------------------------------------------------------------------------


def pac(request: LocalRequest) -> LocalResponse:
    body = b"function FindProxyForURL(url, host) { return 'PROXY 127.0.0.1:8080'; }\n"
    assert request.path == "/proxy.pac"
    return LocalResponse(200, "application/x-ns-proxy-autoconfig", body, (("X-Q", request.query),))


def test_a_registered_local_path_is_answered_without_an_upstream_and_kept_alive() -> None:
    session = ClientSession(local_paths={"/proxy.pac": pac})
    session.receive_client(b"GET /proxy.pac?v=2 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")
    [sent] = session.events()
    assert isinstance(sent, SendClient)
    head, body = sent.data.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 200 OK",
        b"Content-Type: application/x-ns-proxy-autoconfig",
        b"X-Q: v=2",
        b"Content-Length: %d" % len(body),
    ]
    assert body.startswith(b"function FindProxyForURL")
    session.receive_client(GET)
    assert session.events() == [OpenUpstream("example.com", 80, "forward")]


def test_a_head_request_for_a_local_path_gets_no_body() -> None:
    session = ClientSession(local_paths={"/proxy.pac": pac})
    session.receive_client(b"HEAD /proxy.pac HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    sent, closed = session.events()
    assert isinstance(sent, SendClient) and sent.data.endswith(b"Connection: close\r\n\r\n")
    assert closed == CloseClient()


def test_a_local_handler_sees_whether_credentials_came_but_never_their_value() -> None:
    seen: list[LocalRequest] = []

    def status(request: LocalRequest) -> LocalResponse:
        seen.append(request)
        return LocalResponse(200, "application/json", b"{}")

    session = ClientSession(credentials=("ann", "pw"), local_paths={"/fluidity/status": status})
    session.receive_client(
        b"GET /fluidity/status HTTP/1.1\r\nHost: x\r\nProxy-Authorization: %s\r\n\r\n"
        % basic("ann", "pw")
    )
    session.receive_client(b"GET /fluidity/status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r.authenticated for r in seen] == [True, False]
    assert [r.headers for r in seen] == [(("Host", "x"),), (("Host", "x"),)]


def test_a_local_handler_may_answer_an_error() -> None:
    def forbidden(request: LocalRequest) -> LocalResponse:
        raise ProxyProtocolError("status needs credentials: add --proxy-user", 403)

    events = refused(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n", local_paths={"/s": forbidden})
    assert answer_of(events) == error(
        b"403 Forbidden", b"status needs credentials: add --proxy-user"
    )


# -- proxy authentication -----------------------------------------------------------------------


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


CHALLENGE = b'Proxy-Authenticate: Basic realm="fluidity"'


@pytest.mark.parametrize("request_bytes", [GET, CONNECT], ids=["forward", "connect"])
def test_without_credentials_the_answer_is_407_with_a_challenge(request_bytes: bytes) -> None:
    events = refused(request_bytes, credentials=("ann", "s3cret"))
    answer = answer_of(events)
    assert answer.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert CHALLENGE in answer and b"Connection: close" in answer


@pytest.mark.parametrize(
    "value",
    [basic("ann", "wrong"), basic("bob", "s3cret"), b"Basic !!!", b"Bearer abc", b"Basic"],
)
def test_wrong_credentials_get_407_and_are_never_echoed(value: bytes) -> None:
    request = GET.replace(b"\r\n\r\n", b"\r\nProxy-Authorization: %s\r\n\r\n" % value)
    events = refused(request, credentials=("ann", "s3cret"))
    answer = answer_of(events)
    assert status_of(events) == 407 and CHALLENGE in answer
    assert value.split(b" ")[-1] not in answer.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("request_bytes", [GET, CONNECT], ids=["forward", "connect"])
def test_the_right_credentials_open_the_upstream_and_are_not_forwarded(
    request_bytes: bytes,
) -> None:
    session = ClientSession(credentials=("ann", "s3cret"))
    header = b"Proxy-Authorization: %s\r\n" % basic("ann", "s3cret")
    session.receive_client(request_bytes.replace(b"\r\n\r\n", b"\r\n" + header + b"\r\n"))
    assert isinstance(session.next_event(), OpenUpstream)
    session.upstream_opened()
    assert all(header not in getattr(e, "data", b"") for e in session.events())


def test_a_malformed_authorization_line_is_refused_without_quoting_it() -> None:
    request = GET.replace(b"\r\n\r\n", b"\r\nProxy-Authorization : Basic c2VjcmV0\r\n\r\n")
    answer = answer_of(refused(request, credentials=("ann", "s3cret")))
    assert b"c2VjcmV0" not in answer


# -- driver mistakes ---------------------------------------------------------------------------


def test_calls_out_of_order_raise_a_state_error_that_names_the_fix() -> None:
    session = ClientSession()
    with pytest.raises(ProxyStateError, match="OPENING"):
        session.upstream_opened()
    session.receive_client(GET)
    session.upstream_opened()
    with pytest.raises(ProxyStateError, match="upstream_failed"):
        session.upstream_failed(502, "late")


def test_bytes_after_the_clients_eof_are_a_state_error() -> None:
    session = forwarding()
    session.receive_client(b"")
    with pytest.raises(ProxyStateError, match="EOF"):
        session.receive_client(b"more")


def test_reading_pauses_while_an_upstream_opens_or_pipelined_bytes_pile_up() -> None:
    session = ClientSession(max_head_size=1024)
    assert session.wants_client_data
    session.receive_client(GET)
    assert not session.wants_client_data
    session.upstream_opened()
    assert session.wants_client_data
    session.receive_client(b"GET http://example.com/ HTTP/1.1\r\nX: " + b"y" * 1024)
    assert not session.wants_client_data


def test_after_the_end_stray_bytes_from_either_side_are_ignored() -> None:
    session = ClientSession()
    session.receive_client(GET_ORIGIN_FORM)
    session.events()
    session.receive_client(b"more")
    session.receive_upstream(b"late")
    assert session.events() == []
    assert session.state is State.CLOSED
