"""The keeper's waits between connection attempts, cut short by waiting requests and wakes.

:class:`Redialer` is the asyncio side of :class:`fluidity.protocol.redial.RedialPlan`:
it counts the client requests waiting for the tunnel (:meth:`Redialer.waiting`),
sleeps until the plan's next attempt is due (:meth:`Redialer.until_next_attempt`),
and wakes early when a request starts waiting or the machine wakes from sleep. The
sleep watch (:meth:`Redialer.watch_sleep`) ticks every ``tick`` seconds and reports a
jump of the clocks to a callback: the keeper then reconnects at once. One attempt at
a time is the keeper's loop's doing: it only asks here when its last attempt ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

from fluidity.protocol.redial import RedialPlan, SleepDetector
from fluidity.protocol.retry import Backoff

__all__ = ["Redialer"]


class Redialer:
    """When the keeper of one tunnel dials again; see the module docstring.

    ``wall`` is the wall clock the sleep watch compares the loop's clock with
    (replaceable in tests, to play a sleep); ``tick`` is its period.
    """

    def __init__(self, backoff: Backoff, *, tick: float = 2.0) -> None:
        self.plan = RedialPlan(backoff)
        self.tick = tick
        self.wall: Callable[[], float] = time.time
        self.waiters = 0
        """Client requests waiting for the tunnel right now."""
        self._nudge = asyncio.Event()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """A request waits for the tunnel inside this block: an attempt is due soon."""
        self.waiters += 1
        self._nudge.set()
        try:
            yield
        finally:
            self.waiters -= 1

    def attempt_ended(self) -> float | None:
        """An attempt ended: the new backoff delay, or None if the timer stands."""
        return self.plan.attempt_ended(asyncio.get_running_loop().time())

    async def until_next_attempt(self) -> bool:
        """Sleep until the next attempt is due; True if it is made for waiting requests."""
        loop = asyncio.get_running_loop()
        while True:
            self._nudge.clear()
            now = loop.time()
            at, by_demand = self.plan.next_attempt(now, waiting=self.waiters > 0)
            if at <= now:
                self.plan.attempt_started(now, by_demand=by_demand)
                return by_demand
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at - now):
                    await self._nudge.wait()

    def woke(self) -> None:
        """The machine slept: the next attempt is at once (after the one under way)."""
        self.plan.woke(asyncio.get_running_loop().time())
        self._nudge.set()

    async def watch_sleep(self, on_sleep: Callable[[float], None]) -> None:
        """Until cancelled: tick, and call ``on_sleep(seconds)`` after each clock jump."""
        loop = asyncio.get_running_loop()
        detector = SleepDetector(self.tick)
        detector.observe(loop.time(), self.wall())
        while True:
            await asyncio.sleep(self.tick)
            slept = detector.observe(loop.time(), self.wall())
            if slept is not None:
                on_sleep(slept)
