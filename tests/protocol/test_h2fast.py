"""h2 with cheap stream counting counts, refuses and forgets streams exactly as h2 does.

Two pairs of in-memory connections run the same random script of stream
openings and closings: one pair is stock ``H2Connection``, the other
``CountingH2Connection``. A stream the stock pair refuses
(``TooManyStreamsError``) must be refused by ours at the same step, and one it
accepts accepted. Between sweeps our counts are an upper bound of the true ones
(that is the trick: see ``h2fast``); a sweep makes them exact again.
"""

from __future__ import annotations

import importlib
import logging

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidity.protocol import h2fast

LIMIT = 7
HEADERS = [(":method", "CONNECT"), (":authority", "example.com:443")]

# One step: open a stream, or close (end both ways, or reset) the n-th open one.
steps = st.lists(
    st.one_of(
        st.just(("open", 0)),
        st.tuples(st.sampled_from(["end", "reset"]), st.integers(min_value=0, max_value=50)),
    ),
    max_size=300,
)


class Pair:
    """An agent-side and a server-side connection joined in memory."""

    def __init__(self, cls: type[h2.connection.H2Connection]) -> None:
        self.client = cls(config=h2.config.H2Configuration(client_side=True))
        self.server = cls(config=h2.config.H2Configuration(client_side=False))
        self.server.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: LIMIT}
        )
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.xfer()
        self.open: list[int] = []

    def xfer(self) -> None:
        """Move bytes both ways until neither side has anything to send."""
        for _ in range(10):
            out, back = self.client.data_to_send(), self.server.data_to_send()
            if not out and not back:
                return
            self.server.receive_data(out)
            self.client.receive_data(back)

    def step(self, action: str, n: int) -> str:
        if action == "open":
            stream_id = self.client.get_next_available_stream_id()
            try:
                self.client.send_headers(stream_id, HEADERS)
            except h2.exceptions.TooManyStreamsError:
                return "refused"
            self.open.append(stream_id)
        elif self.open:
            stream_id = self.open.pop(n % len(self.open))
            if action == "reset":
                self.client.reset_stream(stream_id)
            else:
                self.client.end_stream(stream_id)
                self.xfer()
                self.server.send_headers(stream_id, [(":status", "200")], end_stream=True)
        self.xfer()
        return "ok"

    def counts(self) -> tuple[int, int, int, int]:
        return (
            self.client.open_outbound_streams,
            self.client.open_inbound_streams,
            self.server.open_inbound_streams,
            self.server.open_outbound_streams,
        )


def test_the_installed_h2_has_the_shape_it_was_written_for() -> None:
    assert h2fast.SHAPE_PROBLEM is None
    assert "_open_streams" in vars(h2fast.CountingH2Connection)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_counts_and_refusals_match_stock_h2(script: list[tuple[str, int]]) -> None:
    stock, ours = Pair(h2.connection.H2Connection), Pair(h2fast.CountingH2Connection)
    for action, n in script:
        assert ours.step(action, n) == stock.step(action, n)
        assert all(o >= s for o, s in zip(ours.counts(), stock.counts(), strict=True))
    ours.client._sweep()
    ours.server._sweep()
    assert ours.counts() == stock.counts()


def test_many_streams_sweep_closed_ones_into_h2s_closed_table() -> None:
    pair = Pair(h2fast.CountingH2Connection)
    for _ in range(3 * h2fast.SWEEP_MIN):
        assert pair.step("open", 0) == "ok"
        assert pair.step("end", 0) == "ok"
    assert len(pair.client.streams) < 2 * h2fast.SWEEP_MIN
    assert len(pair.client._closed_streams) > h2fast.SWEEP_MIN


def test_an_h2_of_another_shape_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    def begin(self: object, stream_id: int) -> None: ...

    monkeypatch.setattr(h2.connection.H2Connection, "_begin_new_stream", begin)
    assert h2fast.shape_problem() == "H2Connection._begin_new_stream has another signature"


def test_an_h2_of_another_shape_keeps_its_own_counting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the shape does not fit, the class keeps h2's methods and a debug line says why."""
    monkeypatch.setattr(h2.connection.H2Connection, "_open_streams", lambda self: 0)
    try:
        with caplog.at_level(logging.DEBUG, logger="fluidity.protocol.h2fast"):
            fallen_back = importlib.reload(h2fast)
        assert "_open_streams" not in vars(fallen_back.CountingH2Connection)
        assert "_begin_new_stream" not in vars(fallen_back.CountingH2Connection)
        assert "cheap stream counting not used (H2Connection._open_streams" in caplog.text
    finally:
        monkeypatch.undo()
        importlib.reload(h2fast)
    assert h2fast.SHAPE_PROBLEM is None
