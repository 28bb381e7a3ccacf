"""Regression benchmark of the hyperframe repr patch: ``python -m benchmarks.frame_repr``.

h2 builds ``repr(frame)`` for every frame it receives. This times that repr for
DATA frames of several sizes with the original hyperframe code and with
``fluidity.protocol.h2patch``, and prints the ratio. The patched cost must
not grow with the frame size; the original grows linearly.
"""

from __future__ import annotations

import argparse
import json
import timeit

import hyperframe.frame

from fluidity.protocol import h2patch

SIZES = (16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024)


def measure(size: int, number: int) -> dict[str, float]:
    """Microseconds per repr of one DATA frame of ``size`` bytes, original and patched."""
    h2patch.apply()
    frame = hyperframe.frame.DataFrame(1, bytes(size), flags={"END_STREAM"})
    assert repr(frame) == h2patch.original_data_frame_repr(frame)
    original = min(
        timeit.repeat(lambda: h2patch.original_data_frame_repr(frame), number=number, repeat=3)
    )
    # The first version of the patch fixed only the hexlify, not the serialisation.
    hex_only = min(
        timeit.repeat(lambda: hyperframe.frame.Frame._body_repr(frame), number=number, repeat=3)
    )
    patched = min(timeit.repeat(lambda: repr(frame), number=number, repeat=3))
    return {
        "frame_bytes": size,
        "original_us": round(original / number * 1e6, 2),
        "hexlify_fix_only_us": round(hex_only / number * 1e6, 2),
        "patched_us": round(patched / number * 1e6, 2),
        "ratio": round(original / patched, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frame_repr", description=__doc__)
    parser.add_argument("--number", type=int, default=200, help="reprs per timing (default 200)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = [measure(size, args.number) for size in SIZES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        "| DATA frame | original repr (µs) | hexlify fix only (µs) | patched repr (µs) "
        "| original / patched |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['frame_bytes'] // 1024} KiB | {row['original_us']} "
            f"| {row['hexlify_fix_only_us']} | {row['patched_us']} "
            f"| {row['ratio']}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
