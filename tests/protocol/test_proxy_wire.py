"""The proxy core's wire helpers: request targets, head bytes, answers, credentials."""

from __future__ import annotations

import base64

import pytest

from fluidity.errors import ProxyProtocolError
from fluidity.protocol import httpwire
from fluidity.protocol.httpwire import ForwardTarget
from fluidity.protocol.proxyevents import LocalResponse


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        (b"GET", b"http://example.com/a/b?c=d", ForwardTarget("example.com", 80, b"/a/b?c=d")),
        (b"GET", b"http://example.com", ForwardTarget("example.com", 80, b"/")),
        (b"GET", b"http://example.com?x=1", ForwardTarget("example.com", 80, b"/?x=1")),
        (b"GET", b"http://example.com:/", ForwardTarget("example.com", 80, b"/")),
        (b"GET", b"HTTP://Example.COM:8080/P", ForwardTarget("example.com", 8080, b"/P")),
        (b"GET", b"http://example.com/page#frag", ForwardTarget("example.com", 80, b"/page")),
        (b"GET", b"http://[2001:db8::1]:81/", ForwardTarget("2001:db8::1", 81, b"/")),
        (b"GET", b"http://[2001:db8::1]/", ForwardTarget("2001:db8::1", 80, b"/")),
        (b"OPTIONS", b"http://example.com", ForwardTarget("example.com", 80, b"*")),
        (b"OPTIONS", b"http://example.com/", ForwardTarget("example.com", 80, b"/")),
    ],
)
def test_absolute_targets_name_the_upstream_and_the_origin_form(
    method: bytes, target: bytes, expected: ForwardTarget
) -> None:
    assert httpwire.parse_absolute_target(method, target) == expected


@pytest.mark.parametrize(
    ("target", "hint"),
    [
        (b"https://example.com/", b"CONNECT"),
        (b"ftp://example.com/", b"only http://"),
        (b"example.com/x", b"absolute-form"),
        (b"http://user:pw@example.com/", b"userinfo"),
        (b"http://example.com:99999/", b"1-65535"),
        (b"http:///path", b"empty"),
    ],
)
def test_unusable_absolute_targets_are_refused_with_a_hint(target: bytes, hint: bytes) -> None:
    with pytest.raises(ProxyProtocolError) as caught:
        httpwire.parse_absolute_target(b"GET", target)
    assert caught.value.status == 400
    assert hint.decode() in str(caught.value)


def test_connect_targets_come_back_bare_and_lower_case() -> None:
    assert httpwire.parse_connect_target(b"Example.COM:443") == ("example.com", 443)
    assert httpwire.parse_connect_target(b"[2001:db8::1]:443") == ("2001:db8::1", 443)


def test_the_request_head_keeps_order_case_and_duplicates_but_not_proxy_headers() -> None:
    headers = [
        (b"X-A", b"1"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"host", b"h"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"x-a", b"2"),
    ]
    assert httpwire.serialise_request_head(b"PUT", b"/p", b"1.0", headers) == (
        b"PUT /p HTTP/1.0\r\nX-A: 1\r\nhost: h\r\nx-a: 2\r\n\r\n"
    )


def test_an_error_answer_is_a_text_line_with_connection_close() -> None:
    assert httpwire.error_response(502, "the target broke: reset") == (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 24\r\nConnection: close\r\n\r\nthe target broke: reset\n"
    )


def test_an_unregistered_status_still_gets_a_reason_phrase() -> None:
    assert httpwire.error_response(599, "odd").startswith(b"HTTP/1.1 599 Error\r\n")


def encoded(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ([(b"Proxy-Authorization", encoded("ann", "pa:ss"))], True),
        ([(b"proxy-authorization", b"basic " + encoded("ann", "pa:ss")[6:])], True),
        ([(b"Proxy-Authorization", encoded("ann", "pa:sS"))], False),
        ([(b"Proxy-Authorization", encoded("ann", "pa:ss"))] * 2, False),
        ([(b"Proxy-Authorization", b"Basic not*base64")], False),
        ([(b"Proxy-Authorization", b"Digest x")], False),
        ([(b"Authorization", encoded("ann", "pa:ss"))], False),
        ([], False),
    ],
    ids=["exact", "scheme-case", "wrong", "twice", "not-base64", "digest", "wrong-header", "none"],
)
def test_credentials_match_only_one_exact_basic_header(
    headers: list[tuple[bytes, bytes]], accepted: bool
) -> None:
    assert httpwire.credentials_match(headers, b"ann:pa:ss") is accepted


def test_connection_tokens_are_read_across_headers_and_case() -> None:
    headers = [(b"Connection", b"Keep-Alive, Upgrade"), (b"CONNECTION", b" close ")]
    assert httpwire.header_tokens(headers, b"connection") == {b"keep-alive", b"upgrade", b"close"}


@pytest.mark.parametrize(
    "bad",
    [
        {"status": 101},
        {"content_type": "text/plain\r\nX-Injected: 1"},
        {"headers": (("Bad Name", "v"),)},
        {"headers": (("X-Ok", "line\nbreak"),)},
    ],
)
def test_a_local_response_that_would_break_the_head_is_a_handler_bug(
    bad: dict[str, object],
) -> None:
    fields: dict[str, object] = {"status": 200, "content_type": "text/plain", "body": b"", **bad}
    with pytest.raises(ValueError, match="LocalResponse"):
        LocalResponse(**fields)  # type: ignore[arg-type]


def test_a_local_response_is_framed_by_content_length() -> None:
    response = LocalResponse(200, "text/plain", b"hi", (("Cache-Control", "no-store"),))
    assert response.encode(head_only=False, keep_alive=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: no-store\r\n"
        b"Content-Length: 2\r\n\r\nhi"
    )
    assert response.encode(head_only=True, keep_alive=False).endswith(
        b"Content-Length: 2\r\nConnection: close\r\n\r\n"
    )
