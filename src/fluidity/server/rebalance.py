"""Asking a few agents to move when this server holds too many tunnels (``rebalance:``).

A load balancer spreads connections, and an agent keeps its tunnel for hours,
so after a scale-out the old servers keep their agents. With
``rebalance.enabled`` the server checks every ``interval`` seconds; above
``above`` tunnels it picks the quietest of the excess (fewest open streams,
then fewest bytes), at most ``batch`` at a time, and asks each to move the
way a drain does, one tunnel at a time:

1. new streams on it are refused with REFUSED_STREAM, which the agent's
   keeper reads as "this server is draining": it opens a new tunnel at once,
   through the load balancer, and retries the refused stream there;
2. the old tunnel's open streams carry on to their end, however long;
3. once it has none, the server closes it with GOAWAY (an idle agent learns
   of the move this way, and reconnects after its short first backoff).

No stream is cut and no request fails. :func:`choose` is the pure decision;
:class:`Rebalancer` carries it out on the server's live connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from fluidity.config.rebalance import RebalanceConfig
from fluidity.transport.connection import TunnelConnection

log = logging.getLogger(__name__)

IDLE_POLL = 0.25  # seconds between looks at a moving tunnel's open streams
MOVE_REASON = "rebalancing: reconnect through the load balancer"


@dataclass(frozen=True)
class TunnelLoad:
    """What :func:`choose` knows of one tunnel."""

    streams: int
    bytes: int


def choose(tunnels: Sequence[TunnelLoad], above: int, batch: int) -> list[int]:
    """Indexes of the tunnels to move now: only the excess over ``above``, at most
    ``batch``, the quietest first (fewest open streams, then fewest bytes)."""
    excess = len(tunnels) - above
    if excess <= 0:
        return []
    order = sorted(range(len(tunnels)), key=lambda i: (tunnels[i].streams, tunnels[i].bytes))
    return order[: min(excess, batch)]


class Rebalancer:
    """Runs :func:`choose` over ``tunnels()`` every ``config.interval`` seconds."""

    def __init__(
        self, config: RebalanceConfig, tunnels: Callable[[], Collection[TunnelConnection]]
    ) -> None:
        self.config = config
        self._tunnels = tunnels
        self._moving: dict[TunnelConnection, asyncio.Task[None]] = {}
        self._runner: asyncio.Task[None] | None = None
        self.moved = 0  # tunnels asked to move so far, for operators and tests

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="rebalance")

    def close(self) -> None:
        """Stop checking; the server's shutdown closes the tunnels that were moving."""
        for task in [self._runner, *self._moving.values()]:
            if task is not None:
                task.cancel()
        self._moving.clear()

    def check(self) -> int:
        """One round: ask the chosen tunnels to move; how many were asked."""
        staying = [c for c in self._tunnels() if c not in self._moving and c.is_usable]
        loads = [TunnelLoad(c.active_streams, c.bytes_in + c.bytes_out) for c in staying]
        chosen = [staying[i] for i in choose(loads, self.config.above, self.config.batch)]
        for conn in chosen:
            log.info(
                "rebalancing: %d tunnels here, above %d: asking %s to move",
                len(staying),
                self.config.above,
                conn.peer_name,
            )
            conn.refuse_new_streams()
            task = asyncio.get_running_loop().create_task(self._close_when_idle(conn))
            self._moving[conn] = task
        self.moved += len(chosen)
        return len(chosen)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval)
            self.check()

    async def _close_when_idle(self, conn: TunnelConnection) -> None:
        try:
            # Streams end in protocol callbacks; a slow poll keeps them free of this.
            while conn.active_streams and not conn.closed.done():  # noqa: ASYNC110
                await asyncio.sleep(IDLE_POLL)
            if not conn.closed.done():
                await conn.finish(MOVE_REASON)
        finally:
            self._moving.pop(conn, None)
