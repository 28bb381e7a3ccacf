"""The dashboard's history: rates from counters, top targets, the error log, and the bound
on its memory, all without a loop and with a clock the test moves."""

from __future__ import annotations

import gc
import tracemalloc

from fluidity.observe import history
from fluidity.observe.history import (
    BUCKET_SECONDS,
    ERRORS,
    MEMORY_BOUND,
    MESSAGE_MAX,
    OTHERS,
    SAMPLES,
    TARGET_MAX,
    TARGETS_PER_BUCKET,
    WINDOW,
    History,
    Throughput,
    TopTargets,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rates_are_differences_of_the_counters_over_the_time_between_samples() -> None:
    ring = Throughput(samples=10)
    ring.record(100.0, 0, 0, 0)
    ring.record(101.0, 1000, 10, 2)
    ring.record(103.0, 5000, 10, 1)
    points = ring.points(now=103.0)
    assert points == [
        {"t": -2.0, "in": 1000.0, "out": 10.0, "streams": 2.0},
        {"t": 0.0, "in": 2000.0, "out": 0.0, "streams": 1.0},
    ]


def test_the_ring_keeps_only_its_size_and_drops_the_oldest() -> None:
    ring = Throughput(samples=5)
    for second in range(12):
        ring.record(float(second), second * 100, 0, second)
    points = ring.points(now=11.0)
    assert len(points) == 4  # five samples, four differences
    assert [p["streams"] for p in points] == [8.0, 9.0, 10.0, 11.0]
    assert all(p["in"] == 100.0 for p in points)


def test_samples_older_than_the_window_are_not_drawn() -> None:
    ring = Throughput()
    ring.record(0.0, 0, 0, 0)
    ring.record(1.0, 10, 0, 0)
    ring.record(WINDOW + 100, 20, 0, 0)
    ring.record(WINDOW + 101, 30, 0, 0)
    assert [p["t"] for p in ring.points(now=WINDOW + 101)] == [-1.0, 0.0]


def test_a_full_ring_holds_ten_minutes_of_one_second_samples() -> None:
    assert SAMPLES - 1 == WINDOW == 600


def test_top_targets_rank_by_bytes_or_by_connections_over_ten_minutes() -> None:
    top = TopTargets()
    now = 60_000.0
    top.add("big.example:443", nbytes=9_000, connections=1, now=now)
    top.add("busy.example:443", nbytes=100, connections=5, now=now + 61)
    top.add("old.example:443", nbytes=99_999, connections=99, now=now - WINDOW - 60)
    by_bytes = top.top(now + 61, "bytes")
    assert [row["target"] for row in by_bytes] == ["big.example:443", "busy.example:443"]
    by_conns = top.top(now + 61, "connections")
    assert by_conns[0] == {"target": "busy.example:443", "bytes": 100, "connections": 5}


def test_a_scan_of_many_targets_is_capped_per_minute_into_others() -> None:
    top = TopTargets()
    for n in range(TARGETS_PER_BUCKET + 50):
        top.add(f"host{n}.example:80", connections=1, now=120.0)
    rows = top.top(120.0, "connections", limit=1000)
    assert len(rows) == TARGETS_PER_BUCKET + 1
    assert {"target": OTHERS, "bytes": 0, "connections": 50} in rows


def test_the_error_log_keeps_the_last_twenty_newest_first_and_cuts_long_messages() -> None:
    clock = Clock()
    kept = History(clock)
    for n in range(ERRORS + 5):
        clock.now += 1
        kept.error(502, "unreachable", f"t{n}:80", "x" * (MESSAGE_MAX + 10))
    errors = kept.view()["errors"]
    assert len(errors) == ERRORS
    assert errors[0]["target"] == f"t{ERRORS + 4}:80"
    assert len(errors[0]["message"]) == MESSAGE_MAX


def test_the_same_error_again_is_counted_not_repeated() -> None:
    clock = Clock()
    kept = History(clock)
    kept.error(502, "unreachable", "a:80", "first")
    for _ in range(50):
        clock.now += 1
        kept.error(0, "connect_failed", "server:443", "cannot connect")
    errors = kept.view()["errors"]
    assert [(e["kind"], e["count"]) for e in errors] == [("connect_failed", 50), ("unreachable", 1)]
    assert errors[0]["time"] == clock.now


def test_the_view_is_json_ready() -> None:
    clock = Clock()
    kept = History(clock)
    kept.sample(0, 0, 0)
    clock.now += 1
    kept.sample(2048, 512, 3)
    kept.target_opened("a.example:443")
    kept.target_bytes("a.example:443", 2560)
    view = kept.view()
    assert view["window"] == WINDOW
    assert view["throughput"] == [{"t": 0.0, "in": 2048.0, "out": 512.0, "streams": 3.0}]
    assert view["top_by_bytes"] == [{"target": "a.example:443", "bytes": 2560, "connections": 1}]


def test_full_history_stays_within_its_stated_memory_bound() -> None:
    """Fill every ring to its worst case (longest names and messages, every slot used,
    a new minute for every bucket) and measure what stays allocated."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        clock = Clock(0.0)
        kept = History(clock)
        for minute in range(history.BUCKETS * 3):  # older minutes must be let go
            clock.now = minute * BUCKET_SECONDS
            for n in range(TARGETS_PER_BUCKET + 20):
                name = f"{minute}-{n}-".ljust(TARGET_MAX + 50, "h")
                kept.target_opened(name)
                kept.target_bytes(name, 2**62)
        for second in range(SAMPLES * 2):
            clock.now += 1
            kept.sample(2**62 + second, 2**62 + second, 10**6)
        for n in range(ERRORS * 3):
            kept.error(502, "unreachable".ljust(40, "k"), "t" * 999, f"{n}".ljust(9999, "m"))
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < MEMORY_BOUND, f"{used} bytes"
    print(f"history at its worst case: {used} bytes (bound {MEMORY_BOUND})")
