"""The tunnel protocol between two in-memory peers: no sockets, no event loop."""

from __future__ import annotations

import pytest

from fluidity.errors import StreamError, TooManyStreams, TunnelClosed
from fluidity.protocol.events import (
    ConnectionTerminated,
    DataReceived,
    PingAcknowledged,
    SendBufferDrained,
    StreamAccepted,
    StreamEnded,
    StreamRejected,
    StreamRequested,
    StreamReset,
    TunnelEvent,
)
from fluidity.protocol.tunnel import MAX_CLOSED_STREAMS, Side, TunnelProtocol
from fluidity.protocol.tunnelflow import HIGH_WATER, STREAM_WINDOW


class Pair:
    """An agent and a server joined by an in-memory wire."""

    def __init__(self, max_streams: int = 1000) -> None:
        self.agent = TunnelProtocol(Side.AGENT)
        self.server = TunnelProtocol(Side.SERVER, max_streams=max_streams)
        self.agent.initiate()
        self.server.initiate()
        self.xfer()

    def xfer(self) -> tuple[list[TunnelEvent], list[TunnelEvent]]:
        """Move bytes both ways until both are quiet; return (agent, server) events."""
        at_agent: list[TunnelEvent] = []
        at_server: list[TunnelEvent] = []
        for _ in range(1000):
            to_server = self.agent.data_to_send()
            to_agent = self.server.data_to_send()
            if not to_server and not to_agent:
                return at_agent, at_server
            if to_server:
                at_server += self.server.receive_data(to_server)
            if to_agent:
                at_agent += self.agent.receive_data(to_agent)
        raise AssertionError("peers never went quiet")

    def open(self, authority: str = "example.com:443") -> int:
        stream_id = self.agent.open_stream(authority)
        _, at_server = self.xfer()
        assert at_server == [StreamRequested(stream_id, authority)]
        self.server.accept_stream(stream_id)
        at_agent, _ = self.xfer()
        assert at_agent == [StreamAccepted(stream_id)]
        return stream_id


def received(events: list[TunnelEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


def test_connect_is_requested_and_accepted() -> None:
    pair = Pair()
    assert pair.open("example.com:443") == 1


def test_rejection_carries_status_and_reason() -> None:
    pair = Pair()
    stream_id = pair.agent.open_stream("10.0.0.1:80")
    pair.xfer()
    pair.server.reject_stream(stream_id, 403, "10.0.0.1 is private")
    at_agent, _ = pair.xfer()
    assert at_agent == [StreamRejected(stream_id, 403, "10.0.0.1 is private")]


def test_bytes_flow_both_ways_and_half_close_passes_through() -> None:
    pair = Pair()
    sid = pair.open()
    pair.agent.send(sid, b"ping")
    pair.agent.end_stream(sid)
    _, at_server = pair.xfer()
    assert at_server == [DataReceived(sid, b"ping"), StreamEnded(sid)]
    pair.server.send(sid, b"pong")
    pair.server.end_stream(sid)
    at_agent, _ = pair.xfer()
    assert at_agent == [DataReceived(sid, b"pong"), StreamEnded(sid)]
    assert pair.agent.open_streams == 0
    assert pair.server.open_streams == 0


def test_an_unacknowledged_stream_stops_at_one_window() -> None:
    pair = Pair()
    sid = pair.open()
    pair.agent.send(sid, b"x" * (3 * STREAM_WINDOW))
    _, at_server = pair.xfer()
    assert len(received(at_server)) == STREAM_WINDOW
    assert pair.agent.pending(sid) == 2 * STREAM_WINDOW


def test_acknowledging_reopens_the_window_and_drains_the_source() -> None:
    pair = Pair()
    sid = pair.open()
    may_continue = pair.agent.send(sid, b"x" * (2 * STREAM_WINDOW))
    assert may_continue is False  # above the high-water mark
    total = 0
    drained = False
    for _ in range(100):
        at_agent, at_server = pair.xfer()
        drained = drained or SendBufferDrained(sid) in at_agent
        got = len(received(at_server))
        if not got:
            break
        total += got
        pair.server.acknowledge(sid, got)
    assert total == 2 * STREAM_WINDOW
    assert drained


def test_a_slow_stream_does_not_block_the_others() -> None:
    pair = Pair()
    slow = pair.open("slow.example:443")
    fast = pair.open("fast.example:443")
    pair.agent.send(slow, b"s" * STREAM_WINDOW)  # never acknowledged
    pair.xfer()
    pair.agent.send(fast, b"f" * 1000)
    _, at_server = pair.xfer()
    assert at_server == [DataReceived(fast, b"f" * 1000)]


def test_send_returns_false_above_high_water() -> None:
    pair = Pair()
    sid = pair.open()
    assert pair.agent.send(sid, b"x" * (HIGH_WATER // 2)) is True
    assert pair.agent.send(sid, b"x" * (STREAM_WINDOW + HIGH_WATER)) is False


def test_paused_output_holds_data_but_not_pings() -> None:
    pair = Pair()
    sid = pair.open()
    pair.agent.pause_output()
    pair.agent.send(sid, b"held")
    payload = pair.agent.ping()
    at_agent, at_server = pair.xfer()
    assert received(at_server) == b""
    assert PingAcknowledged(payload) in at_agent
    pair.agent.resume_output()
    _, at_server = pair.xfer()
    assert received(at_server) == b"held"


def test_reset_reaches_the_peer() -> None:
    pair = Pair()
    sid = pair.open()
    pair.agent.reset_stream(sid)
    _, at_server = pair.xfer()
    assert [type(e) for e in at_server] == [StreamReset]
    with pytest.raises(StreamError):
        pair.agent.send(sid, b"late")


def test_draining_server_refuses_new_streams_but_keeps_open_ones() -> None:
    pair = Pair()
    sid = pair.open()
    pair.server.refuse_new_streams()
    late = pair.agent.open_stream("late.example:443")
    at_agent, _ = pair.xfer()
    assert at_agent == [StreamReset(late, 7)]  # REFUSED_STREAM
    pair.agent.send(sid, b"still flowing")
    _, at_server = pair.xfer()
    assert received(at_server) == b"still flowing"


def test_the_servers_stream_limit_is_a_named_error_until_a_stream_ends() -> None:
    pair = Pair(max_streams=2)
    first = pair.open()
    pair.open("b.example:443")
    with pytest.raises(TooManyStreams, match=r"2 streams.*limits.max_streams_per_tunnel"):
        pair.agent.open_stream("c.example:443")
    pair.agent.reset_stream(first)
    pair.xfer()
    pair.open("c.example:443")  # a slot came free


def test_goaway_is_reported() -> None:
    pair = Pair()
    pair.server.close(reason="bye")
    at_agent, _ = pair.xfer()
    assert at_agent == [ConnectionTerminated(0, 0, "bye")]
    assert not pair.agent.is_open


def test_only_connect_is_served() -> None:
    pair = Pair()
    pair.agent._h2.send_headers(  # a plain GET, as a stray HTTP/2 client would send
        1,
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"x")],
        end_stream=True,
    )
    at_agent, at_server = pair.xfer()
    assert at_server == []
    assert at_agent == []  # not a stream the agent opened: nothing to report


def test_garbage_from_the_peer_is_a_closed_tunnel() -> None:
    server = TunnelProtocol(Side.SERVER)
    server.initiate()
    with pytest.raises(TunnelClosed):
        server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_a_rejected_stream_is_closed_on_both_peers() -> None:
    pair = Pair(max_streams=3)
    for _ in range(10):  # more rejections than the server allows concurrent streams
        stream_id = pair.agent.open_stream("10.0.0.1:80")
        pair.xfer()
        pair.server.reject_stream(stream_id, 403, "private")
        at_agent, _ = pair.xfer()
        assert at_agent == [StreamRejected(stream_id, 403, "private")]
    assert pair.open() > 0  # the rejected ones no longer count as open


def test_stream_limit_is_enforced_exactly_at_scale() -> None:
    pair = Pair(max_streams=300)
    opened = [pair.agent.open_stream(f"example.com:{i + 1}") for i in range(300)]
    _, at_server = pair.xfer()
    assert len([e for e in at_server if isinstance(e, StreamRequested)]) == 300
    with pytest.raises(StreamError, match="server's maximum"):
        pair.agent.open_stream("example.com:9999")
    pair.agent.reset_stream(opened[0])
    pair.xfer()
    pair.open()  # one slot came free: exactly one more stream fits
    with pytest.raises(StreamError, match="server's maximum"):
        pair.agent.open_stream("example.com:9999")


def test_finished_streams_are_swept_from_h2() -> None:
    pair = Pair()
    for _ in range(500):
        stream_id = pair.open()
        pair.agent.end_stream(stream_id)
        pair.server.end_stream(stream_id)
        pair.xfer()
    assert pair.agent.open_streams == pair.server.open_streams == 0
    assert len(pair.agent._h2.streams) < 100 and len(pair.server._h2.streams) < 100


def test_a_window_update_moves_only_the_waiting_stream() -> None:
    pair = Pair()
    blocked, other = pair.open(), pair.open()
    pair.agent.send(blocked, b"x" * (STREAM_WINDOW + 1000))
    at_server = pair.xfer()[1]
    assert len(received(at_server)) == STREAM_WINDOW
    assert pair.agent._flow.waiting() == [blocked]
    pair.agent.send(other, b"y")
    pair.server.acknowledge(blocked, STREAM_WINDOW)
    at_server = pair.xfer()[1]
    assert received(at_server) == b"y" + b"x" * 1000
    assert pair.agent._flow.waiting() == []


def open_and_reset(pair: Pair, count: int) -> None:
    """``count`` streams opened, accepted and reset by the agent, one after another."""
    for _ in range(count):
        stream_id = pair.agent.open_stream("other.example:443")
        pair.xfer()
        pair.server.accept_stream(stream_id)
        pair.xfer()
        pair.agent.reset_stream(stream_id)
    pair.xfer()


def test_a_late_frame_on_a_stream_we_reset_is_ignored_many_streams_later() -> None:
    """The server sends on a stream the agent has just reset; meanwhile 1,000 other
    streams open and close. The late DATA is dropped, the tunnel lives on."""
    pair = Pair()
    late = pair.open()
    pair.server.send(late, b"in flight")
    in_flight = pair.server.data_to_send()  # on the wire before the reset arrives
    pair.agent.reset_stream(late)
    open_and_reset(pair, 1000)
    assert pair.agent.receive_data(in_flight) == []
    sid = pair.open("last.example:443")
    pair.agent.send(sid, b"still fine")
    _, at_server = pair.xfer()
    assert received(at_server) == b"still fine"


def test_memory_of_closed_streams_is_bounded() -> None:
    pair = Pair()
    open_and_reset(pair, MAX_CLOSED_STREAMS + 100)
    pair.agent.open_stream("one-more.example:443")  # h2 files closed streams on the next open
    assert len(pair.agent._h2._closed_streams) <= MAX_CLOSED_STREAMS
