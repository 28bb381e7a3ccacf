"""CONNECT authorities split into host and port, or refused naming the problem. No event loop."""

from __future__ import annotations

import pytest

from fluidity.protocol.authority import parse_authority


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        pytest.param("example.com:443", ("example.com", 443), id="name"),
        pytest.param("Example.COM:80", ("Example.COM", 80), id="case-kept"),
        pytest.param("1.2.3.4:1", ("1.2.3.4", 1), id="ipv4"),
        pytest.param("[::1]:8080", ("::1", 8080), id="ipv6"),
        pytest.param("[::ffff:1.2.3.4]:65535", ("::ffff:1.2.3.4", 65535), id="mapped-max-port"),
        pytest.param("example.com.:443", ("example.com.", 443), id="trailing-dot"),
        pytest.param("_srv.example.com:443", ("_srv.example.com", 443), id="underscore"),
        pytest.param("example.com:00443", ("example.com", 443), id="leading-zeros"),
    ],
)
def test_parse_authority_splits_host_and_port(authority: str, expected: tuple[str, int]) -> None:
    assert parse_authority(authority) == expected


@pytest.mark.parametrize(
    ("authority", "problem"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("example.com", "port is missing", id="no-port"),
        pytest.param("example.com:", "port is missing", id="empty-port"),
        pytest.param(":443", "host is empty", id="empty-host"),
        pytest.param("[]:443", "host is empty", id="empty-brackets"),
        pytest.param("example.com:0", "not a number 1-65535", id="port-zero"),
        pytest.param("example.com:65536", "not a number 1-65535", id="port-too-big"),
        pytest.param("example.com:443443", "not a number 1-65535", id="port-six-digits"),
        pytest.param("example.com:-1", "not a number 1-65535", id="negative-port"),
        pytest.param("example.com:+443", "not a number 1-65535", id="plus-port"),
        pytest.param("example.com:4_43", "not a number 1-65535", id="underscore-port"),
        pytest.param("example.com:\uff14\uff14\uff13", "not ASCII", id="fullwidth-port"),
        pytest.param("ex ample.com:443", "whitespace", id="space-in-host"),
        pytest.param("example.com :443", "whitespace", id="space-before-colon"),
        pytest.param("example.com:443\r\n", "whitespace", id="crlf"),
        pytest.param("example.com\x00:443", "control", id="nul"),
        pytest.param("example.com\x7f:443", "control", id="del"),
        pytest.param("user@example.com:443", "userinfo", id="userinfo"),
        pytest.param("user:pw@example.com:443", "userinfo", id="userinfo-password"),
        pytest.param("example.com:443/path", "path", id="path"),
        pytest.param("example.com/x:443", "path", id="path-in-host"),
        pytest.param("example.com:443?q", "path or query", id="query"),
        pytest.param("exa\\mple.com:443", "path", id="backslash"),
        pytest.param("%65xample.com:443", "percent-encoding", id="percent-encoded"),
        pytest.param("[fe80::1%25eth0]:443", "zone id", id="zone-id"),
        pytest.param("b\u00fccher.example:443", "IDNA", id="unicode-host"),
        pytest.param("::1:443", "must be in brackets", id="unbracketed-ipv6"),
        pytest.param("[::1]", "[address]:port", id="bracketed-without-port"),
        pytest.param("[::1]443", "[address]:port", id="no-colon-after-bracket"),
        pytest.param("[1.2.3.4]:443", "brackets are for IPv6", id="bracketed-ipv4"),
        pytest.param("[example.com]:443", "brackets are for IPv6", id="bracketed-name"),
        pytest.param("exa!mple.com:443", "characters other than", id="bang-in-host"),
        pytest.param("a" * 255 + ":443", "longer than 254", id="host-too-long"),
    ],
)
def test_parse_authority_rejects_malformed_input(authority: str, problem: str) -> None:
    with pytest.raises(ValueError, match="is not a valid host:port") as raised:
        parse_authority(authority)
    assert problem in str(raised.value)
