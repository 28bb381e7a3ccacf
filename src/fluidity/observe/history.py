"""The last ten minutes, in memory of a fixed size: what the dashboard draws.

Three bounded rings, fed from the same counters ``/metrics`` and ``fluidity
status`` read (``Metrics`` owns one ``History``):

* ``Throughput``: one sample a second of the cumulative payload byte counters
  and the open streams, ``SAMPLES`` of them in preallocated arrays; rates are
  the differences between neighbours, computed when the page asks.
* ``TopTargets``: bytes and connections by target in one-minute buckets,
  ``BUCKETS`` of them, each holding at most ``TARGETS_PER_BUCKET`` names (the
  rest are added up under ``OTHERS``), so a scan of a million hosts costs no
  more than a hundred.
* ``ErrorLog``: the last ``ERRORS`` errors, each message cut to ``MESSAGE_MAX``
  characters.

None of them grows with uptime: ``MEMORY_BOUND`` is the worst case in bytes,
and ``tests/observe/test_history.py`` fills every ring to it and measures.
"""

from __future__ import annotations

import itertools
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

WINDOW = 600.0  # seconds of history: the last ten minutes
INTERVAL = 1.0  # seconds between two throughput samples
SAMPLES = int(WINDOW / INTERVAL) + 1  # one more: rates are differences of neighbours
BUCKET_SECONDS = 60.0
BUCKETS = int(WINDOW / BUCKET_SECONDS)
TARGETS_PER_BUCKET = 100
TARGET_MAX = 255  # characters of a target name (a DNS name is at most 253, plus :port)
OTHERS = "(others)"
ERRORS = 20
MESSAGE_MAX = 500
# The worst case, measured with tracemalloc by the test that fills every ring (CPython
# 3.11, 64-bit): throughput arrays 21 KiB, target buckets 441 KiB (1,000 names of 255
# characters and their counters), errors 21 KiB; 484 KiB in all. The bound stated in
# docs/observability.md leaves headroom for other interpreter versions.
MEMORY_BOUND = 640 * 1024


class Throughput:
    """``SAMPLES`` samples of (time, bytes in, bytes out, streams) in four fixed arrays."""

    def __init__(self, samples: int = SAMPLES) -> None:
        self._size = samples
        self._time = array("d", bytes(8 * samples))
        self._in = array("d", bytes(8 * samples))
        self._out = array("d", bytes(8 * samples))
        self._streams = array("d", bytes(8 * samples))
        self._next = 0  # where the next sample goes
        self._count = 0

    def record(self, now: float, bytes_in: int, bytes_out: int, streams: int) -> None:
        """One sample of the cumulative byte counters and the streams open at ``now``."""
        i = self._next
        self._time[i], self._in[i], self._out[i] = now, float(bytes_in), float(bytes_out)
        self._streams[i] = float(streams)
        self._next = (i + 1) % self._size
        self._count = min(self._count + 1, self._size)

    def points(self, now: float, window: float = WINDOW) -> list[dict[str, float]]:
        """Oldest first: ``t`` (seconds before ``now``, negative), ``in``/``out`` (bytes per
        second since the previous sample) and ``streams``, for the samples in ``window``."""
        order = [(self._next - self._count + k) % self._size for k in range(self._count)]
        found: list[dict[str, float]] = []
        for before, i in itertools.pairwise(order):
            elapsed = self._time[i] - self._time[before]
            if now - self._time[i] > window or elapsed <= 0:
                continue
            found.append(
                {
                    "t": round(self._time[i] - now, 1),
                    # A counter that went down (never, today) reads as no traffic, not negative.
                    "in": max(self._in[i] - self._in[before], 0.0) / elapsed,
                    "out": max(self._out[i] - self._out[before], 0.0) / elapsed,
                    "streams": self._streams[i],
                }
            )
        return found


class TopTargets:
    """Bytes and connections by target over the last ``BUCKETS`` minutes."""

    def __init__(self) -> None:
        # (minute number, {target: [bytes, connections]}), newest last
        self._buckets: deque[tuple[int, dict[str, list[int]]]] = deque(maxlen=BUCKETS)

    def add(self, target: str, *, nbytes: int = 0, connections: int = 0, now: float) -> None:
        """Count ``nbytes`` and ``connections`` for ``target`` in the minute of ``now``."""
        bucket = self._bucket(now)
        counts = bucket.get(target[:TARGET_MAX])
        if counts is None:
            key = target[:TARGET_MAX] if len(bucket) < TARGETS_PER_BUCKET else OTHERS
            counts = bucket.setdefault(key, [0, 0])
        counts[0] += nbytes
        counts[1] += connections

    def top(self, now: float, by: str, limit: int = 10) -> list[dict[str, Any]]:
        """The ``limit`` targets with the most ``by`` (``bytes`` or ``connections``) in the
        window ending at ``now``, most first."""
        column = {"bytes": 0, "connections": 1}[by]
        oldest = _minute(now) - BUCKETS + 1
        totals: dict[str, list[int]] = {}
        for minute, bucket in self._buckets:
            if minute < oldest:
                continue
            for target, (nbytes, conns) in bucket.items():
                total = totals.setdefault(target, [0, 0])
                total[0] += nbytes
                total[1] += conns
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1][column], kv[0]))
        return [
            {"target": t, "bytes": c[0], "connections": c[1]}
            for t, c in ranked[:limit]
            if c[column] > 0
        ]

    def _bucket(self, now: float) -> dict[str, list[int]]:
        minute = _minute(now)
        if not self._buckets or self._buckets[-1][0] != minute:
            self._buckets.append((minute, {}))  # the deque drops the oldest minute
        return self._buckets[-1][1]


def _minute(now: float) -> int:
    return int(now // BUCKET_SECONDS)


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """One error as the client (or the agent's owner) saw it."""

    time: float  # epoch seconds
    status: int  # the HTTP status the client was answered (0: not a client's request)
    kind: str  # the metrics label: policy_refused, no_tunnel, tls_error...
    target: str  # host:port, or the server for a tunnel error
    message: str  # the answer's body, word for word (cut to MESSAGE_MAX)
    count: int = 1  # the same error this many times in a row (time: the latest)


class ErrorLog:
    """The last ``ERRORS`` errors, newest first when read; the same error again right
    after itself (a tunnel retrying against a server that is down) is counted, not
    repeated, so it cannot push every other error out."""

    def __init__(self) -> None:
        self._entries: deque[ErrorEntry] = deque(maxlen=ERRORS)

    def add(self, status: int, kind: str, target: str, message: str, now: float) -> None:
        entry = ErrorEntry(now, status, kind, target[:TARGET_MAX], message[:MESSAGE_MAX])
        last = self._entries[-1] if self._entries else None
        if last is not None and replace(last, time=now, count=1) == entry:
            self._entries[-1] = replace(entry, count=last.count + 1)
        else:
            self._entries.append(entry)

    def latest(self) -> list[dict[str, Any]]:
        return [asdict(entry) for entry in reversed(self._entries)]


class History:
    """The three rings of one agent or server; ``clock`` gives epoch seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.throughput = Throughput()
        self.targets = TopTargets()
        self.errors = ErrorLog()

    def sample(self, bytes_in: int, bytes_out: int, streams: int) -> None:
        self.throughput.record(self.clock(), bytes_in, bytes_out, streams)

    def target_opened(self, target: str) -> None:
        self.targets.add(target, connections=1, now=self.clock())

    def target_bytes(self, target: str, nbytes: int) -> None:
        if nbytes > 0:
            self.targets.add(target, nbytes=nbytes, now=self.clock())

    def error(self, status: int, kind: str, target: str, message: str) -> None:
        self.errors.add(status, kind, target, message, self.clock())

    def view(self) -> dict[str, Any]:
        """Everything, as JSON-ready values: the dashboard's ``history`` key."""
        now = self.clock()
        return {
            "window": WINDOW,
            "throughput": self.throughput.points(now),
            "top_by_bytes": self.targets.top(now, "bytes"),
            "top_by_connections": self.targets.top(now, "connections"),
            "errors": self.errors.latest(),
        }
