"""A narrowly scoped speed fix for hyperframe, applied at import.

h2 logs every received frame with ``trace("Received frame: %s", repr(frame))``:
the ``repr`` is built even when nothing is logged. For a DATA frame hyperframe
builds it the slow way twice over:

* ``DataFrame`` has no ``_body_repr`` of its own, so ``Frame._body_repr``
  serialises the whole body (padding length, payload, padding: a full copy)
  only to pass it to ``_raw_data_repr``;
* ``_raw_data_repr`` hexlifies the *whole* buffer before keeping 20 hex digits
  of it.

For a 256 KiB DATA frame that is a 256 KiB copy and half a megabyte of hex
thrown away -- about half the receiving CPU in bulk transfers.

And when a DATA frame is sent, ``DataFrame.serialize_body`` joins the padding
length, the payload and the padding into a new buffer even when there is no
padding (always, here), before ``Frame.serialize`` copies it once more behind
the header: one full copy of every byte sent, for nothing.

The repr replacements look only at the bytes that can appear in the result
(the first 11), and the body replacement returns the payload itself when there
is no padding, so their output is identical for every input;
``tests/protocol/test_h2patch.py`` checks that and ``benchmarks/frame_repr.py``
measures the difference.

A new hyperframe release may change what is replaced here. ``apply`` first
checks that the replaced pieces still have the expected shape and that the
replacements give the original's answers on sample frames; if not, it leaves
hyperframe as it is (slower, still correct) and says so in a debug log line.
CI runs the equivalence tests on the lowest and newest hyperframe allowed.
"""

from __future__ import annotations

import binascii
import logging
from typing import Any

import hyperframe.frame

from fluidity.protocol.patchcheck import installed_version, parameter_names

log = logging.getLogger(__name__)

_ORIGINAL = hyperframe.frame._raw_data_repr
_ORIGINAL_DATA_SERIALIZE_BODY = hyperframe.frame.DataFrame.serialize_body
_PAD_ZEROES = b"\0" * 11

# _raw_data_repr keeps 20 hex digits (10 bytes) and adds "..." when there were
# more, so 11 bytes decide its output.
_SHOWN = 11


def raw_data_repr(data: bytes | memoryview | None) -> str:
    """``hyperframe.frame._raw_data_repr`` without hexlifying what it discards."""
    if not data:
        return "None"
    r = binascii.hexlify(data[:_SHOWN]).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


def data_body_repr(frame: Any) -> str:
    """``DataFrame._body_repr`` (the serialised body's repr) without serialising it.

    The serialised body is ``[pad length byte if PADDED] + data + pad_length
    zero bytes``; only its first ``_SHOWN`` bytes are built here.
    """
    head = frame.serialize_padding_data() + bytes(frame.data[:_SHOWN])
    if len(head) < _SHOWN and frame.pad_length:
        head += _PAD_ZEROES[: min(frame.pad_length, _SHOWN - len(head))]
    return raw_data_repr(head)


def data_serialize_body(frame: Any) -> bytes:
    """``DataFrame.serialize_body`` without copying an unpadded payload."""
    if frame.pad_length or "PADDED" in frame.flags:
        return _ORIGINAL_DATA_SERIALIZE_BODY(frame)
    data = frame.data
    if isinstance(data, memoryview):
        frame.data = data = data.tobytes()  # as the original does
    return data if type(data) is bytes else bytes(data)


def apply() -> bool:
    """Install the fixes if this hyperframe has the shape they were made for; idempotent.

    Returns whether they are installed.
    """
    problem = shape_problem()
    if problem is not None:
        log.debug(
            "hyperframe %s: speed fix not applied (%s)", installed_version("hyperframe"), problem
        )
        return False
    hyperframe.frame._raw_data_repr = raw_data_repr
    frame_class: Any = hyperframe.frame.DataFrame
    frame_class._body_repr = data_body_repr
    frame_class.serialize_body = data_serialize_body
    return True


def installed() -> bool:
    """Whether ``apply`` installed the fixes."""
    return hyperframe.frame._raw_data_repr is raw_data_repr


def shape_problem() -> str | None:
    """Why the fixes do not fit the installed hyperframe, or ``None`` when they do."""
    frame_class: Any = hyperframe.frame.DataFrame
    if not callable(_ORIGINAL) or parameter_names(_ORIGINAL) != ["data"]:
        return "_raw_data_repr is not the function it was"
    if frame_class.__dict__.get("_body_repr", data_body_repr) is not data_body_repr:
        return "DataFrame has a _body_repr of its own"
    for name in ("serialize_body", "serialize_padding_data"):
        if not callable(getattr(frame_class, name, None)):
            return f"DataFrame.{name} is missing"
    return _sample_problem()


def _sample_problem() -> str | None:
    """Compare the replacements with the originals on a few frames."""
    samples = [(b"", 0), (b"x" * 5, 0), (bytes(range(40)), 0), (b"y" * 3, 4)]
    for data, pad in samples:
        frame = hyperframe.frame.DataFrame(1, data=data)
        if pad:
            frame.flags.add("PADDED")
            frame.pad_length = pad
        body = _ORIGINAL_DATA_SERIALIZE_BODY(frame)
        if data_serialize_body(frame) != body:
            return "DataFrame.serialize_body gives other bytes"
        if data_body_repr(frame) != _ORIGINAL(body):
            return "DataFrame's repr differs"
        if raw_data_repr(data) != _ORIGINAL(data):
            return "_raw_data_repr differs"
    return None


def original_raw_data_repr(data: bytes | None) -> str:
    """The unpatched function, for the equivalence test and the benchmark."""
    return _ORIGINAL(data)


def original_data_frame_serialize_body(frame: hyperframe.frame.DataFrame) -> bytes:
    """The unpatched ``DataFrame.serialize_body``, for the equivalence test."""
    body: bytes = _ORIGINAL_DATA_SERIALIZE_BODY(frame)
    return body


def original_data_frame_repr(frame: hyperframe.frame.DataFrame) -> str:
    """``repr(frame)`` as unpatched hyperframe builds it (whole body serialised, hexlified)."""
    body = _ORIGINAL(_ORIGINAL_DATA_SERIALIZE_BODY(frame))
    return f"{type(frame).__name__}(stream_id={frame.stream_id}, flags={frame.flags!r}): {body}"
