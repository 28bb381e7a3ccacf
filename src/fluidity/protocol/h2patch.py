"""A narrowly scoped speed fix for hyperframe, applied at import.

h2 logs every received frame with ``trace("Received frame: %s", repr(frame))``:
the ``repr`` is built even when nothing is logged, and hyperframe's
``_raw_data_repr`` hexlifies the *whole* payload before keeping 20 hex digits
of it. For a 256 KiB DATA frame that is half a megabyte of hex thrown away --
about half the receiving CPU in bulk transfers.

The replacement hexlifies only the bytes that can appear in the result, so
its output is identical for every input; ``tests/protocol/test_h2patch.py``
checks that and the benchmark ``benchmarks/frame_repr.py`` measures it.
"""

from __future__ import annotations

import binascii

import hyperframe.frame

_ORIGINAL = hyperframe.frame._raw_data_repr


def raw_data_repr(data: bytes | None) -> str:
    """``hyperframe.frame._raw_data_repr`` without hexlifying what it discards."""
    if not data:
        return "None"
    r = binascii.hexlify(data[:11]).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


def apply() -> None:
    """Install the fix; idempotent."""
    hyperframe.frame._raw_data_repr = raw_data_repr


def original_raw_data_repr(data: bytes | None) -> str:
    """The unpatched function, for the equivalence test and the benchmark."""
    return _ORIGINAL(data)
