"""More than one tunnel to the server when one is full.

The server caps the streams of one tunnel connection (``limits.max_streams_per_tunnel``,
sent as HTTP/2 ``MAX_CONCURRENT_STREAMS``, 1,000 by default). A build machine
or an agent shared by a team can have more connections open than that.
Rather than answer 503 at the cap, ``TunnelPool`` opens another connection to
the same server -- up to ``max_tunnels`` in all -- and puts the stream there.

The first connection is the keeper's (``fluidity.agent.keeper``): it is
connected at start, reconnected after every loss, retired when the server
drains, and every stream goes to it while it has room. The others ("extra"
tunnels) exist only while needed:

* one is dialled when every tunnel is full, by the first stream that finds
  them full; the streams arriving meanwhile wait for that same dial;
* a stream goes to the first tunnel with room, the keeper's first, so new
  streams pack into the oldest tunnels and the newest empty first;
* an extra tunnel that has carried no stream for ``idle_timeout`` seconds is
  closed (checked four times per ``idle_timeout``, so it goes after 1 to 1.25
  times that);
* one that the server drains, or that is lost, is dropped from the pool; its
  open streams finish on it (or fail with it, as on the keeper's);
* a failed dial is not retried for ``GROW_RETRY`` seconds: meanwhile streams
  that find every tunnel full get 503 at once, with the dial's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fluidity.agent.keeper import TunnelKeeper
from fluidity.errors import (
    StreamUnprocessed,
    TooManyStreams,
    TunnelClosed,
    TunnelError,
    TunnelUnavailable,
)
from fluidity.transport.connection import TunnelConnection
from fluidity.transport.streams import StreamHandler, TunnelStream

log = logging.getLogger(__name__)

GROW_RETRY = 5.0  # seconds before another extra tunnel is tried after a failed dial


class TunnelPool:
    """The keeper's tunnel and up to ``max_tunnels - 1`` extra ones, for opening streams."""

    def __init__(
        self, keeper: TunnelKeeper, *, max_tunnels: int = 8, idle_timeout: float = 60.0
    ) -> None:
        if max_tunnels < 1 or idle_timeout <= 0:
            raise ValueError("max_tunnels must be at least 1 and idle_timeout positive")
        self.keeper = keeper
        self.max_tunnels = max_tunnels
        self.idle_timeout = idle_timeout
        self._extras: list[TunnelConnection] = []  # usable, oldest first
        self._leaving: set[TunnelConnection] = set()  # dropped, finishing their streams
        self._idle_since: dict[TunnelConnection, float] = {}
        self._growing: asyncio.Task[TunnelConnection] | None = None
        self._grow_failure: tuple[float, str] | None = None  # loop time, why
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.extras_opened = 0
        self._closed_bytes = [0, 0]  # in, out: of extra tunnels that are gone

    # -- what the agent reads -------------------------------------------------

    @property
    def tunnels(self) -> int:
        """Tunnel connections usable for new streams now: the keeper's and the extras."""
        primary = self.keeper.connection
        usable = primary is not None and primary.is_usable
        return int(usable) + sum(1 for conn in self._extras if conn.is_usable)

    @property
    def bytes_in(self) -> int:
        """Stream payload received over every tunnel since the agent started."""
        live = sum(conn.bytes_in for conn in (*self._extras, *self._leaving))
        return self.keeper.bytes_in + self._closed_bytes[0] + live

    @property
    def bytes_out(self) -> int:
        """Stream payload sent over every tunnel since the agent started."""
        live = sum(conn.bytes_out for conn in (*self._extras, *self._leaving))
        return self.keeper.bytes_out + self._closed_bytes[1] + live

    # -- opening streams --------------------------------------------------------

    async def open_stream(self, authority: str, handler: StreamHandler) -> TunnelStream:
        """A stream to ``authority`` on the first tunnel with room, dialling one if none has.

        Raises what ``TunnelKeeper.open_stream`` raises; ``TooManyStreams`` once
        ``max_tunnels`` tunnels are all full; ``TunnelUnavailable`` when an extra
        tunnel is needed and cannot be had.
        """
        primary_full = False
        for _ in range(self.max_tunnels + 2):  # each turn fills a tunnel or drops one
            primary = self.keeper.connection
            extra = self._extra_with_room()
            if self.max_tunnels == 1 or (
                not primary_full and _worth_trying(primary, extra, self._extras)
            ):
                try:
                    return await self.keeper.open_stream(authority, handler)
                except TooManyStreams:
                    if self.max_tunnels == 1:
                        raise
                    primary_full = True
                    continue
            conn = extra or await self._grow(primary)
            try:
                return await conn.open_stream(authority, handler)
            except TooManyStreams:
                continue  # the last room went to another stream: look again
            except (TunnelClosed, StreamUnprocessed) as exc:
                self._drop(conn, f"it cannot open streams: {exc}")
                if extra is None:  # a new tunnel that carries nothing: the server
                    # turned it away (limits.max_tunnels...); do not dial again at once
                    self._grow_failed(f"the new tunnel could not carry a stream: {exc}")
        raise TunnelUnavailable(
            f"no tunnel to {self.keeper.address} took the stream after "
            f"{self.max_tunnels + 2} tries: every one is full or closing"
        )

    def _extra_with_room(self) -> TunnelConnection | None:
        for conn in self._extras:
            if conn.has_room:
                return conn
        return None

    async def _grow(self, primary: TunnelConnection | None) -> TunnelConnection:
        """A new extra tunnel, or the one being dialled; raises if none may or can be had."""
        if self._growing is None:
            self._check_may_grow(primary)
            self._growing = asyncio.get_running_loop().create_task(self._dial())
            self._growing.add_done_callback(self._grown)
        return await asyncio.shield(self._growing)

    def _check_may_grow(self, primary: TunnelConnection | None) -> None:
        if 1 + len(self._extras) >= self.max_tunnels:
            limit = primary.stream_limit if primary is not None else "its"
            raise TooManyStreams(
                f"all {self.max_tunnels} tunnels to {self.keeper.address} carry the server's "
                f"maximum of {limit} streams each: retry when one ends, or raise max_tunnels "
                "in agent.yaml or limits.max_streams_per_tunnel in server.yaml"
            )
        failure = self._grow_failure
        now = asyncio.get_running_loop().time()
        if failure is not None and now - failure[0] < GROW_RETRY:
            raise TunnelUnavailable(
                f"the tunnel to {self.keeper.address} is full and another could not be "
                f"opened {now - failure[0]:.1f} s ago: {failure[1]}"
            )

    async def _dial(self) -> TunnelConnection:
        try:
            conn = await self.keeper.dial_extra()
        except TunnelError as exc:
            self._grow_failed(str(exc))
            raise TunnelUnavailable(f"the tunnel is full and another failed: {exc}") from exc
        self._grow_failure = None
        self._extras.append(conn)
        self.extras_opened += 1
        self.keeper.metrics.connection_made()
        conn.closed.add_done_callback(lambda _: self._gone(conn))
        log.info(
            "tunnel to %s full: opened another (%d open, max_tunnels %d)",
            self.keeper.address,
            1 + len(self._extras),
            self.max_tunnels,
        )
        self._arm_sweeper()
        return conn

    def _grow_failed(self, why: str) -> None:
        self._grow_failure = (asyncio.get_running_loop().time(), why)
        log.warning(
            "the tunnel to %s is full and another could not be opened (next try in %g s): %s",
            self.keeper.address,
            GROW_RETRY,
            why,
        )

    def _grown(self, task: asyncio.Task[TunnelConnection]) -> None:
        self._growing = None
        if not task.cancelled():
            task.exception()  # retrieved: the waiters may all have gone

    # -- extra tunnels leaving ------------------------------------------------------

    def _drop(self, conn: TunnelConnection, why: str) -> None:
        """No new streams on ``conn``; its open streams finish (or fail) on it."""
        if conn in self._extras:
            log.info("extra tunnel to %s dropped: %s", self.keeper.address, why)
            self._extras.remove(conn)
            self._idle_since.pop(conn, None)
            conn.goaway_received = True  # stop using it for new streams
            if not conn.closed.done():
                self._leaving.add(conn)

    def _gone(self, conn: TunnelConnection) -> None:
        """``conn`` closed: forget it, keeping its byte counts."""
        self._drop(conn, "connection closed")
        self._leaving.discard(conn)
        self._closed_bytes[0] += conn.bytes_in
        self._closed_bytes[1] += conn.bytes_out

    def _arm_sweeper(self) -> None:
        if self._sweeper is None and self._extras:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.idle_timeout / 4, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close the extra tunnels that carried no stream for ``idle_timeout`` seconds."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for conn in list(self._extras):
            if conn.active_streams:
                self._idle_since.pop(conn, None)
            elif now - self._idle_since.setdefault(conn, now) >= self.idle_timeout:
                self._drop(conn, f"no streams for {self.idle_timeout:g} s")
                self._finish(conn, "idle extra tunnel")
        self._arm_sweeper()

    def _finish(self, conn: TunnelConnection, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(conn.finish(reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every extra tunnel (GOAWAY, bounded wait for the TLS close); the
        keeper closes its own."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._growing is not None:
            self._growing.cancel()
            with contextlib.suppress(asyncio.CancelledError, TunnelError):
                await self._growing
        for conn in (*self._extras, *self._leaving):
            self._finish(conn, "agent stopping")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _worth_trying(
    primary: TunnelConnection | None,
    extra: TunnelConnection | None,
    extras: list[TunnelConnection],
) -> bool:
    """Whether a stream goes to the keeper's tunnel: always while there are no extras
    (it waits for the keeper as before); else if it has room, or if it is down and no
    extra has room (then the keeper's reconnect is what to wait for)."""
    if not extras:
        return True
    if primary is not None and primary.is_usable:
        return primary.has_room
    return extra is None
