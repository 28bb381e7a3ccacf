"""The SOCKS5 core, byte by byte, without an event loop."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidity.protocol.proxyevents import ProxyStateError
from fluidity.protocol.socks import (
    MAX_EARLY_DATA,
    CloseClient,
    EndUpstream,
    OpenUpstream,
    Reply,
    SendClient,
    SendUpstream,
    SocksSession,
    State,
    encode_reply,
    is_socks5,
    reply_for_status,
)

NO_AUTH_GREETING = b"\x05\x01\x00"
SUCCESS = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"


def connect_request(atyp: int, address: bytes, port: int, command: int = 1) -> bytes:
    return bytes((5, command, 0, atyp)) + address + struct.pack("!H", port)


def domain_request(name: bytes, port: int, command: int = 1) -> bytes:
    return connect_request(3, bytes((len(name),)) + name, port, command)


def auth_message(username: bytes, password: bytes) -> bytes:
    return bytes((1, len(username))) + username + bytes((len(password),)) + password


def open_session(request: bytes) -> tuple[SocksSession, list[object]]:
    session = SocksSession()
    events = session.receive(NO_AUTH_GREETING + request)
    return session, list(events)


def test_first_byte_tells_socks5_from_http() -> None:
    assert is_socks5(0x05)
    assert not is_socks5(ord("C"))  # CONNECT
    assert not is_socks5(ord("G"))  # GET
    assert not is_socks5(0x04)  # SOCKS4 is not spoken


def test_greeting_then_domain_request_opens_the_upstream() -> None:
    session = SocksSession()
    assert session.receive(NO_AUTH_GREETING) == [SendClient(b"\x05\x00")]
    events = session.receive(domain_request(b"example.com", 443))
    assert events == [OpenUpstream("example.com", 443, kind="socks")]
    assert session.state is State.CONNECTING
    assert session.target == ("example.com", 443)


@pytest.mark.parametrize(
    ("atyp", "address", "host"),
    [
        (1, bytes((93, 184, 216, 34)), "93.184.216.34"),
        (4, bytes.fromhex("20010db8000000000000000000000001"), "2001:db8::1"),
        (3, b"\x0bexample.org", "example.org"),
    ],
)
def test_every_address_type_decodes(atyp: int, address: bytes, host: str) -> None:
    _, events = open_session(connect_request(atyp, address, 8443))
    assert events[-1] == OpenUpstream(host, 8443, kind="socks")


def test_messages_split_at_every_byte_still_parse() -> None:
    wire = NO_AUTH_GREETING + domain_request(b"split.example", 80)
    session = SocksSession()
    events = [event for byte in wire for event in session.receive(bytes((byte,)))]
    assert events == [SendClient(b"\x05\x00"), OpenUpstream("split.example", 80, kind="socks")]


def test_success_reply_then_relay_passes_bytes_both_ways() -> None:
    session, _ = open_session(domain_request(b"example.com", 443))
    assert session.upstream_opened() == [SendClient(SUCCESS)]
    assert session.receive(b"hello") == [SendUpstream(b"hello")]
    assert session.receive(b"") == [EndUpstream()]


def test_bytes_pipelined_after_the_request_are_passed_on_when_the_upstream_opens() -> None:
    session, events = open_session(domain_request(b"example.com", 443) + b"\x16\x03\x01early")
    assert events[-1] == OpenUpstream("example.com", 443, kind="socks")
    assert session.receive(b"-more") == []
    assert session.upstream_opened() == [
        SendClient(SUCCESS),
        SendUpstream(b"\x16\x03\x01early-more"),
    ]


def test_client_half_close_while_connecting_is_delivered_after_the_reply() -> None:
    session, _ = open_session(domain_request(b"example.com", 80) + b"GET / HTTP/1.0\r\n\r\n")
    assert session.receive(b"") == []
    assert session.upstream_opened() == [
        SendClient(SUCCESS),
        SendUpstream(b"GET / HTTP/1.0\r\n\r\n"),
        EndUpstream(),
    ]


def test_too_much_early_data_closes_the_client() -> None:
    session, _ = open_session(domain_request(b"example.com", 443))
    events = session.receive(b"x" * (MAX_EARLY_DATA + 1))
    assert events == [CloseClient()]
    assert session.error is not None and "before its tunnel opened" in str(session.error)
    assert session.upstream_opened() == []  # the driver drops the stream it opened


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        (403, "target policy refuses 10.0.0.1", Reply.NOT_ALLOWED),
        (502, "example.com did not resolve", Reply.HOST_UNREACHABLE),
        (502, "connection refused by 192.0.2.1:443", Reply.CONNECTION_REFUSED),
        (504, "connect timed out", Reply.TTL_EXPIRED),
        (503, "circuit open", Reply.GENERAL_FAILURE),
        (500, "anything else", Reply.GENERAL_FAILURE),
    ],
)
def test_upstream_failure_answers_the_mapped_code_and_closes(
    status: int, reason: str, code: Reply
) -> None:
    assert reply_for_status(status, reason) is code
    session, _ = open_session(domain_request(b"example.com", 443))
    assert session.upstream_failed(status, reason) == [
        SendClient(bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0))),
        CloseClient(),
    ]
    assert session.state is State.CLOSED
    assert session.receive(b"late bytes") == []


@pytest.mark.parametrize(("command", "name"), [(2, "BIND"), (3, "UDP ASSOCIATE")])
def test_bind_and_udp_associate_are_refused_with_0x07(command: int, name: str) -> None:
    session, events = open_session(domain_request(b"example.com", 443, command=command))
    assert events[-2:] == [SendClient(encode_reply(Reply.COMMAND_NOT_SUPPORTED)), CloseClient()]
    assert session.error is not None and "only CONNECT" in str(session.error), name


def test_unknown_address_type_is_refused_with_0x08() -> None:
    _, events = open_session(connect_request(0x02, b"\x00\x00\x00\x00", 80))
    assert events[-2:] == [
        SendClient(encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)),
        CloseClient(),
    ]


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", id="socks4-greeting"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="http"),
    ],
)
def test_a_bad_greeting_version_closes_without_an_answer(wire: bytes) -> None:
    session = SocksSession()
    assert session.receive(wire) == [CloseClient()]
    assert session.error is not None and "not a SOCKS5 greeting" in str(session.error)


def test_a_bad_request_version_gets_a_general_failure() -> None:
    session = SocksSession()
    session.receive(NO_AUTH_GREETING)
    events = session.receive(b"\x04" + domain_request(b"example.com", 443)[1:])
    assert events == [SendClient(encode_reply(Reply.GENERAL_FAILURE)), CloseClient()]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"a" * 254, id="overlong-name"),
        pytest.param(b"a" * 64 + b".example", id="overlong-label"),
        pytest.param(b"evil host", id="space"),
        pytest.param(b"caf\xc3\xa9.example", id="non-ascii"),
        pytest.param(b"a\x00b", id="nul"),
    ],
)
def test_bad_domain_names_get_a_general_failure(name: bytes) -> None:
    session, events = open_session(domain_request(name, 443))
    assert events[-2:] == [SendClient(encode_reply(Reply.GENERAL_FAILURE)), CloseClient()]
    assert session.state is State.CLOSED


def test_port_zero_is_refused() -> None:
    _, events = open_session(domain_request(b"example.com", 0))
    assert events[-1] == CloseClient()


def test_truncated_handshake_then_eof_closes_the_client() -> None:
    session = SocksSession()
    session.receive(NO_AUTH_GREETING)
    assert session.receive(domain_request(b"example.com", 443)[:7]) == []
    assert session.receive(b"") == [CloseClient()]
    assert session.error is not None and "middle of the SOCKS5 request" in str(session.error)


def test_no_acceptable_method_is_answered_0xff() -> None:
    session = SocksSession()
    assert session.receive(b"\x05\x01\x02") == [SendClient(b"\x05\xff"), CloseClient()]


def test_zero_methods_is_answered_0xff() -> None:
    assert SocksSession().receive(b"\x05\x00") == [SendClient(b"\x05\xff"), CloseClient()]


class TestUsernamePassword:
    """RFC 1929, required when the agent has proxy credentials configured."""

    def session(self) -> SocksSession:
        return SocksSession(credentials=("alice", "s3cret"))

    def test_client_that_offers_only_no_auth_is_refused(self) -> None:
        events = self.session().receive(NO_AUTH_GREETING)
        assert events == [SendClient(b"\x05\xff"), CloseClient()]

    def test_right_credentials_lead_to_the_request(self) -> None:
        session = self.session()
        assert session.receive(b"\x05\x02\x00\x02") == [SendClient(b"\x05\x02")]
        assert session.receive(auth_message(b"alice", b"s3cret")) == [SendClient(b"\x01\x00")]
        assert session.receive(domain_request(b"example.com", 443)) == [
            OpenUpstream("example.com", 443, kind="socks")
        ]

    def test_greeting_auth_and_request_in_one_segment(self) -> None:
        wire = b"\x05\x01\x02" + auth_message(b"alice", b"s3cret") + domain_request(b"a.b", 1)
        assert self.session().receive(wire) == [
            SendClient(b"\x05\x02"),
            SendClient(b"\x01\x00"),
            OpenUpstream("a.b", 1, kind="socks"),
        ]

    @pytest.mark.parametrize(
        ("username", "password"),
        [(b"alice", b"wrong"), (b"mallory", b"s3cret"), (b"alice", b"s3cret-and-more")],
    )
    def test_wrong_credentials_are_refused(self, username: bytes, password: bytes) -> None:
        session = self.session()
        session.receive(b"\x05\x01\x02")
        events = session.receive(auth_message(username, password))
        assert events == [SendClient(b"\x01\x01"), CloseClient()]
        assert session.error is not None and "s3cret" not in str(session.error)

    def test_empty_username_is_refused(self) -> None:
        session = self.session()
        session.receive(b"\x05\x01\x02")
        assert session.receive(b"\x01\x00\x01x") == [SendClient(b"\x01\x01"), CloseClient()]

    def test_bad_subnegotiation_version_is_refused(self) -> None:
        session = self.session()
        session.receive(b"\x05\x01\x02")
        wire = b"\x05" + auth_message(b"alice", b"s3cret")[1:]
        assert session.receive(wire) == [SendClient(b"\x01\x01"), CloseClient()]


def test_calls_out_of_turn_are_driver_errors() -> None:
    with pytest.raises(
        ProxyStateError, match=r"upstream_opened\(\) is legal only in state CONNECTING"
    ):
        SocksSession().upstream_opened()


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    data=st.lists(st.binary(max_size=40), max_size=8),
    credentials=st.sampled_from([None, ("alice", "s3cret")]),
)
def test_arbitrary_client_bytes_never_raise_and_close_at_most_once(
    data: list[bytes], credentials: tuple[str, str] | None
) -> None:
    session = SocksSession(credentials)
    events = [event for chunk in data for event in session.receive(chunk)]
    closes = [e for e in events if isinstance(e, CloseClient)]
    assert len(closes) <= 1 and (not closes or events[-1] == closes[0])
    assert (session.state is State.CLOSED) == bool(closes)
