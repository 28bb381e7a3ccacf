"""The WebSocket channel between two in-memory peers: no sockets, no event loop."""

from __future__ import annotations

import os

import pytest
from websockets.frames import Frame, Opcode

from fluidity.protocol.wschannel import (
    MAX_MESSAGE,
    BytesReceived,
    ChannelClosed,
    ChannelEvent,
    ChannelOpened,
    ChannelRefused,
    PongReceived,
    WebSocketChannel,
)

PATH = "/fluidity"


class Pair:
    """An agent's channel and a server's channel joined by an in-memory wire."""

    def __init__(self, client_path: str = PATH, server_path: str = PATH) -> None:
        self.client = WebSocketChannel.client(
            host="tunnel.example.com", port=443, path=client_path, secure=True
        )
        self.server = WebSocketChannel.server(path=server_path)
        self.wire_to_server = b""

    def xfer(self) -> tuple[list[ChannelEvent], list[ChannelEvent]]:
        """Move bytes both ways until both are quiet; return (client, server) events."""
        at_client: list[ChannelEvent] = []
        at_server: list[ChannelEvent] = []
        for _ in range(100):
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return at_client, at_server
            self.wire_to_server += to_server
            if to_server:
                at_server += self.server.receive_data(to_server)
            if to_client:
                at_client += self.client.receive_data(to_client)
        raise AssertionError("peers never went quiet")

    def open(self) -> None:
        at_client, at_server = self.xfer()
        assert [type(e) for e in at_client] == [ChannelOpened]
        assert [type(e) for e in at_server] == [ChannelOpened]


def stream(events: list[ChannelEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, BytesReceived))


def test_the_upgrade_is_an_ordinary_http11_websocket_request() -> None:
    pair = Pair()
    pair.open()
    head = pair.wire_to_server.decode()
    assert head.startswith("GET /fluidity HTTP/1.1\r\n")
    assert "Host: tunnel.example.com\r\n" in head
    assert "Upgrade: websocket\r\n" in head
    assert pair.client.is_open and pair.server.is_open


def test_the_server_tells_the_client_its_request_headers() -> None:
    pair = Pair()
    _, at_server = pair.xfer()
    opened = at_server[0]
    assert isinstance(opened, ChannelOpened)
    assert ("Sec-WebSocket-Version", "13") in opened.headers


def test_bytes_flow_both_ways_in_binary_messages_split_at_max_message() -> None:
    pair = Pair()
    pair.open()
    blob = os.urandom(3 * MAX_MESSAGE + 17)
    pair.client.send_bytes(blob)
    pair.server.send_bytes(b"back")
    at_client, at_server = pair.xfer()
    assert stream(at_server) == blob
    assert len([e for e in at_server if isinstance(e, BytesReceived)]) == 4
    assert stream(at_client) == b"back"


def test_message_boundaries_do_not_matter_bytes_arrive_in_order_whatever_the_chunking() -> None:
    pair = Pair()
    pair.open()
    for piece in (b"one", b"two", b"three"):
        pair.client.send_bytes(piece)
    wire = pair.client.data_to_send()
    received = b""
    for i in range(len(wire)):  # one byte at a time: frames split anywhere
        received += stream(pair.server.receive_data(wire[i : i + 1]))
    assert received == b"onetwothree"


def test_fragmented_messages_from_an_intermediary_are_one_stream() -> None:
    pair = Pair()
    pair.open()
    # A proxy may re-frame a message into fragments (RFC 6455 section 5.4).
    frames = [
        Frame(Opcode.BINARY, b"frag-", fin=False),
        Frame(Opcode.CONT, b"ment", fin=False),
        Frame(Opcode.CONT, b"ed", fin=True),
    ]
    wire = b"".join(f.serialize(mask=True) for f in frames)
    assert stream(pair.server.receive_data(wire)) == b"frag-mented"


def test_a_ping_is_answered_and_the_pong_reported() -> None:
    pair = Pair()
    pair.open()
    pair.client.ping(b"keepalive")
    at_client, at_server = pair.xfer()
    assert at_server == []  # the server side answers by itself
    assert at_client == [PongReceived(b"keepalive")]


def test_another_path_is_refused_with_404() -> None:
    pair = Pair(client_path="/elsewhere")
    at_client, at_server = pair.xfer()
    assert at_server == [ChannelRefused(404, "/elsewhere: Not Found")]
    assert len(at_client) == 1
    refused = at_client[0]
    assert isinstance(refused, ChannelRefused) and refused.status == 404
    assert "no WebSocket endpoint" in refused.reason
    assert pair.server.wants_eof


def test_a_plain_get_is_answered_426() -> None:
    server = WebSocketChannel.server(path=PATH)
    events = server.receive_data(b"GET /fluidity HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [type(e) for e in events] == [ChannelRefused]
    assert server.data_to_send().startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert server.wants_eof


def test_a_non_websocket_answer_is_a_refusal_with_the_status_and_body() -> None:
    client = WebSocketChannel.client(host="h", port=443, path=PATH, secure=True)
    client.data_to_send()
    body = b"Blocked by corporate policy"
    answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    assert client.receive_data(answer) == [
        ChannelRefused(403, "Forbidden: Blocked by corporate policy")
    ]


def test_garbage_instead_of_an_answer_is_a_refusal_without_status() -> None:
    client = WebSocketChannel.client(host="h", port=443, path=PATH, secure=True)
    client.data_to_send()
    events = client.receive_data(b"\x16\x03\x01 not http at all\r\n\r\n")
    assert len(events) == 1
    refused = events[0]
    assert isinstance(refused, ChannelRefused) and refused.status == 0


def test_text_messages_are_a_protocol_violation() -> None:
    pair = Pair()
    pair.open()
    wire = Frame(Opcode.TEXT, b"hello").serialize(mask=True)
    assert pair.server.receive_data(wire) == [
        ChannelClosed(1003, "fluidity carries binary messages only")
    ]
    assert pair.server.receive_data(wire) == []  # reported once; the rest is discarded


def test_close_handshake_reports_the_code_once() -> None:
    pair = Pair()
    pair.open()
    pair.client.close(1000, "bye")
    at_client, at_server = pair.xfer()
    assert at_server == [ChannelClosed(1000, "bye")]
    assert at_client == [ChannelClosed(1000, "bye")]
    assert pair.server.wants_eof
    assert pair.server.receive_eof() == []


def test_end_of_connection_without_close_is_abnormal() -> None:
    pair = Pair()
    pair.open()
    assert pair.server.receive_eof() == [ChannelClosed(1006, "the connection ended")]


@pytest.mark.parametrize("size", [0, 1, MAX_MESSAGE, MAX_MESSAGE + 1])
def test_send_bytes_sizes(size: int) -> None:
    pair = Pair()
    pair.open()
    pair.server.send_bytes(b"x" * size)
    at_client, _ = pair.xfer()
    assert stream(at_client) == b"x" * size
