"""When the agent tries to reach its server again: the timer, a waiting request, a wake. Sans-I/O.

Three things start a connection attempt while the tunnel is down:

* the backoff timer (:class:`~fluidity.protocol.retry.Backoff`): exponential with full
  jitter, so that nobody's laptop knocks on a dead server in a tight loop;
* demand: a client request waiting for the tunnel starts an attempt at once, and
  while requests keep waiting, one every ``spacing`` seconds (0.5 s), however many
  they are. A waiting request is thus served within ``spacing`` (plus a handshake)
  of the server coming back, whatever the length of the outage: the timer alone
  may be 30 s away by then;
* a wake from sleep (:class:`SleepDetector`): the outage before the sleep says
  nothing about the network after it, so the backoff starts over and the next
  attempt is at once.

An attempt made for a waiting request that fails leaves the backoff alone: the
timer keeps the time and the ceiling it had, as if that attempt had not been made,
so demand neither resets the backoff of attempts nobody waits for nor grows it.

:class:`RedialPlan` decides; the caller passes the time in (``now``, the event
loop's clock) and does the waiting, so every rule here is tested without a loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fluidity.protocol.retry import Backoff

__all__ = ["DEMAND_SPACING", "RedialPlan", "SleepDetector"]

DEMAND_SPACING = 0.5
"""Seconds between the starts of two attempts made for waiting requests."""


@dataclass
class RedialPlan:
    """The schedule of one keeper's attempts: ``backoff`` for the timer, demand and wakes.

    The keeper calls :meth:`attempt_ended` after each attempt (failed, or a connection
    that ended), then waits until :meth:`next_attempt` says, and calls
    :meth:`attempt_started` when it goes. The keeper resets ``backoff`` itself after
    a connection that worked; a reset backoff always starts a new timer here.
    """

    backoff: Backoff
    spacing: float = DEMAND_SPACING
    timed_at: float = 0.0
    """When the backoff timer's attempt is due (event-loop time); the first is at once."""
    _last_start: float = field(default=-math.inf, repr=False)
    _by_demand: bool = field(default=False, repr=False)
    _woke: bool = field(default=False, repr=False)  # during an attempt: the next is at once
    _attempting: bool = field(default=True, repr=False)  # the keeper starts with an attempt

    def attempt_ended(self, now: float) -> float | None:
        """Schedule the timer after an attempt: the new delay, or None if it stands.

        None after a failed attempt made for a waiting request while the timer was
        still ahead: the backoff is untouched and its timer keeps its time.
        """
        self._attempting = False
        if self._woke:
            self._woke = False
            self._by_demand = False
            self.timed_at = now
            return 0.0
        kept = self._by_demand and self.backoff.attempts > 0 and now < self.timed_at
        self._by_demand = False
        if kept:
            return None
        delay = self.backoff.next_delay()
        self.timed_at = now + delay
        return delay

    def next_attempt(self, now: float, *, waiting: bool) -> tuple[float, bool]:
        """When the next attempt is due, and whether it is made for waiting requests.

        With requests ``waiting``: at once, but no sooner than ``spacing`` after the
        last start, and never later than the timer. Without: the timer.
        """
        if waiting:
            soon = max(now, self._last_start + self.spacing)
            if soon < self.timed_at:
                return soon, True
        return self.timed_at, False

    def attempt_started(self, now: float, *, by_demand: bool) -> None:
        """An attempt starts at ``now`` (``by_demand``: for waiting requests)."""
        self._last_start = now
        self._by_demand = by_demand
        self._attempting = True

    def woke(self, now: float) -> None:
        """The machine slept: the backoff starts over and the next attempt is at once.

        If an attempt is under way, the one after it is at once too.
        """
        self.backoff.reset()
        if self._attempting:
            self._woke = True
        else:
            self.timed_at = min(self.timed_at, now)


@dataclass
class SleepDetector:
    """Notices, from a periodic tick, that the machine slept (or the process was frozen).

    Call :meth:`observe` about every ``tick`` seconds with the monotonic clock and the
    wall clock. Two symptoms, one per kind of system: where the monotonic clock stops
    during a suspend (Linux, macOS), the wall clock ran ahead of it; where it keeps
    counting, the tick came late. Either gap of ``threshold`` seconds or more is a
    sleep. A wall clock set back is no sleep; one set forward by that much (rare: NTP
    slews small errors) counts as one, which costs a reconnect and nothing more.
    """

    tick: float
    threshold: float = 5.0
    _last: tuple[float, float] | None = field(default=None, repr=False)

    def observe(self, monotonic: float, wall: float) -> float | None:
        """The seconds apparently slept since the previous call, or None if none."""
        last, self._last = self._last, (monotonic, wall)
        if last is None:
            return None
        ran = monotonic - last[0]
        missed = max((wall - last[1]) - ran, ran - self.tick)
        return missed if missed >= self.threshold else None
