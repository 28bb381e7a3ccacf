"""The timers that notice a dead tunnel connection and a silent stream.

``Keepalive``: after ``interval`` seconds without a byte from the peer an
HTTP/2 PING goes out, and a PING unanswered for ``timeout`` seconds declares
the connection dead, so a blackholed path is noticed within ``interval +
timeout``. ``IdleSweep``: a stream with no bytes either way for ``timeout``
seconds expires (one sweep timer per connection, every quarter timeout, so a
silent stream goes between 1 and 1.25 timeouts).

Both only keep time: what a PING is, what a dead connection or an expired
stream means, is the connection's business, given to them as callbacks. A
zero interval or timeout turns either off. Neither schedules anything until
``start``, and ``cancel`` stops it for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Keepalive:
    """PINGs a connection the peer has gone quiet on; gives it up if a PING goes unanswered.

    ``heard`` is called on every read from the peer. ``interval`` seconds after
    the last one, ``send_ping`` is called; unless ``acknowledged`` follows
    within ``timeout`` seconds, ``on_dead`` is called, once, and no more PINGs
    are sent.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float,
        timeout: float,
        *,
        send_ping: Callable[[], None],
        on_dead: Callable[[], None],
    ) -> None:
        self._loop = loop
        self.interval = interval
        self.timeout = timeout
        self._send_ping = send_ping
        self._on_dead = on_dead
        self._last_heard = loop.time()
        self._ping_timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def heard(self) -> None:
        """Bytes came from the peer: it is alive, and no PING is due for ``interval``."""
        self._last_heard = self._loop.time()

    def start(self) -> None:
        """Wait for ``interval`` seconds of silence (nothing, if the interval is 0)."""
        if self.interval > 0:
            self._ping_timer = self._loop.call_later(self.interval, self._on_ping_timer)

    def acknowledged(self) -> None:
        """The peer answered a PING: call off the deadline and wait for silence again."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            self.start()

    def cancel(self) -> None:
        """Stop both timers: the connection is gone."""
        for timer in (self._ping_timer, self._deadline):
            if timer is not None:
                timer.cancel()

    def _on_ping_timer(self) -> None:
        # One timer for the whole interval rather than one per read: when it fires
        # early (bytes came since it was set), it is set again for the rest.
        idle = self._loop.time() - self._last_heard
        if idle < self.interval:
            self._ping_timer = self._loop.call_later(self.interval - idle, self._on_ping_timer)
            return
        self._send_ping()
        self._deadline = self._loop.call_later(self.timeout, self._on_ping_lost)

    def _on_ping_lost(self) -> None:
        self._deadline = None
        self._on_dead()


class IdleSweep:
    """Expires streams with no bytes either way for ``timeout`` seconds (0: never).

    ``saw`` records traffic on a stream. Every quarter timeout a sweep forgets
    each stream ``is_open`` no longer reports, and hands each one silent for the
    whole timeout to ``expire`` (forgotten first, so it expires once).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        *,
        is_open: Callable[[int], bool],
        expire: Callable[[int], None],
    ) -> None:
        self._loop = loop
        self.timeout = timeout
        self._is_open = is_open
        self._expire = expire
        self._seen: dict[int, float] = {}  # last byte either way, per stream
        self._timer: asyncio.TimerHandle | None = None

    @property
    def scheduled(self) -> bool:
        """True once a sweep has been scheduled (never, with a timeout of 0)."""
        return self._timer is not None

    def saw(self, stream_id: int) -> None:
        """A byte went either way on ``stream_id``, or it just opened."""
        if self.timeout > 0:
            self._seen[stream_id] = self._loop.time()

    def start(self) -> None:
        """Schedule the next sweep (nothing, if the timeout is 0)."""
        if self.timeout > 0:
            self._timer = self._loop.call_later(self.timeout / 4, self._sweep)

    def cancel(self) -> None:
        """Stop sweeping: the connection is gone."""
        if self._timer is not None:
            self._timer.cancel()

    def _sweep(self) -> None:
        now = self._loop.time()
        for stream_id, seen in list(self._seen.items()):
            if not self._is_open(stream_id):
                del self._seen[stream_id]
            elif now - seen >= self.timeout:
                del self._seen[stream_id]
                self._expire(stream_id)
        self.start()
