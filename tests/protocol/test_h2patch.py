"""The hyperframe repr patch prints exactly what the original prints, for any frame."""

from __future__ import annotations

import logging

import hyperframe.frame
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluidity.protocol import h2patch
from fluidity.protocol.tunnel import TunnelProtocol  # noqa: F401  (applies the patch)

payloads = st.one_of(
    st.binary(max_size=64),
    st.integers(min_value=0, max_value=300_000).map(lambda n: bytes(range(256)) * (n // 256)),
)


def test_the_patch_is_installed_at_import_where_hyperframe_has_its_shape() -> None:
    assert h2patch.shape_problem() is None  # the versions pyproject.toml allows
    assert h2patch.installed()
    assert hyperframe.frame._raw_data_repr is h2patch.raw_data_repr
    assert hyperframe.frame.DataFrame._body_repr is h2patch.data_body_repr
    assert hyperframe.frame.DataFrame.serialize_body is h2patch.data_serialize_body


@given(payloads)
def test_raw_data_repr_matches_the_original(data: bytes) -> None:
    assert h2patch.raw_data_repr(data) == h2patch.original_raw_data_repr(data)


@given(payloads)
def test_raw_data_repr_accepts_memoryviews_like_the_original(data: bytes) -> None:
    assert h2patch.raw_data_repr(memoryview(data)) == h2patch.original_raw_data_repr(data)


def test_raw_data_repr_of_nothing() -> None:
    assert h2patch.raw_data_repr(None) == h2patch.original_raw_data_repr(None) == "None"
    assert h2patch.raw_data_repr(b"") == "None"


@given(
    data=payloads,
    stream_id=st.integers(min_value=1, max_value=2**31 - 1),
    end_stream=st.booleans(),
    padded=st.booleans(),
    pad_length=st.integers(min_value=0, max_value=255),
)
def test_data_frame_repr_matches_the_original(
    data: bytes, stream_id: int, end_stream: bool, padded: bool, pad_length: int
) -> None:
    flags = {"END_STREAM"} if end_stream else set()
    if padded:
        flags.add("PADDED")
    frame = hyperframe.frame.DataFrame(
        stream_id, data, flags=flags, pad_length=pad_length if padded else 0
    )
    assert repr(frame) == h2patch.original_data_frame_repr(frame)


@given(payloads)
def test_parsed_data_frames_repr_like_the_original(data: bytes) -> None:
    wire = hyperframe.frame.DataFrame(1, data, flags={"PADDED"}, pad_length=3).serialize()
    frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(wire[:9]))
    frame.parse_body(memoryview(wire[9 : 9 + length]))
    assert repr(frame) == h2patch.original_data_frame_repr(frame)


def test_other_frames_keep_their_own_repr() -> None:
    frame = hyperframe.frame.HeadersFrame(1, b"\x82" * 40)
    assert repr(frame).endswith("data=<hex:82828282828282828282...>")


@given(
    data=payloads,
    as_view=st.booleans(),
    end_stream=st.booleans(),
    padded=st.booleans(),
    pad_length=st.integers(min_value=0, max_value=255),
)
def test_data_frames_serialise_exactly_like_the_original(
    data: bytes, as_view: bool, end_stream: bool, padded: bool, pad_length: int
) -> None:
    def frame() -> hyperframe.frame.DataFrame:
        flags = {"END_STREAM"} if end_stream else set()
        if padded:
            flags.add("PADDED")
        payload = memoryview(data)[: len(data)] if as_view else data
        return hyperframe.frame.DataFrame(
            7, payload, flags=flags, pad_length=pad_length if padded else 0
        )

    patched, original = frame(), frame()
    assert patched.serialize_body() == h2patch.original_data_frame_serialize_body(original)
    wire = frame().serialize()  # a whole frame, header included, reads back the same
    parsed, length = hyperframe.frame.Frame.parse_frame_header(memoryview(wire[:9]))
    parsed.parse_body(memoryview(wire[9 : 9 + length]))
    assert parsed.data == data and parsed.flags == patched.flags


def test_an_unpadded_payload_is_not_copied() -> None:
    payload = bytes(256 * 1024)
    frame = hyperframe.frame.DataFrame(1, payload)
    assert frame.serialize_body() is payload


def test_a_hyperframe_of_another_shape_keeps_its_own_code(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A release that gave DataFrame a repr of its own is left alone, and the log says so."""

    class NewDataFrame(hyperframe.frame.DataFrame):
        def _body_repr(self) -> str:
            return "upstream's own"

    monkeypatch.setattr(hyperframe.frame, "DataFrame", NewDataFrame)
    monkeypatch.setattr(hyperframe.frame, "_raw_data_repr", h2patch.original_raw_data_repr)
    with caplog.at_level(logging.DEBUG, logger="fluidity.protocol.h2patch"):
        assert h2patch.apply() is False
    assert NewDataFrame._body_repr is not h2patch.data_body_repr
    assert not h2patch.installed()
    assert "speed fix not applied (DataFrame has a _body_repr of its own)" in caplog.text


def test_a_changed_raw_data_repr_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2patch, "_ORIGINAL", lambda data, width: "changed")
    assert h2patch.shape_problem() == "_raw_data_repr is not the function it was"
