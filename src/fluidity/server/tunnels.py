"""The server's live tunnel connections: who is admitted, and what outlives each one.

``Tunnels`` admits a connection while fewer than ``limits.max_tunnels`` are live
(read at each admission, so a reloaded limit applies to the next agent), forgets
it when it closes, and keeps what must survive it: the bytes it carried (the
metrics' counters never go down) and the last time anything happened (the
lifecycle's idle clock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fluidity.lifecycle.cloudwatch import Activity
from fluidity.observe.metrics import Metrics
from fluidity.server.connection import ServerConnection

log = logging.getLogger("fluidity.server.server")


class Tunnels:
    """The set of admitted, still open tunnel connections of one server."""

    def __init__(self, metrics: Metrics, max_tunnels: Callable[[], int]) -> None:
        self.live: set[ServerConnection] = set()
        self._metrics = metrics
        self._max_tunnels = max_tunnels
        self._closed_bytes = (0, 0)  # (in, out) of connections gone
        self._last_activity = time.time()

    def admit(self, conn: ServerConnection, *, draining: bool) -> bool:
        """Register ``conn``; False once ``limits.max_tunnels`` are live (logged). During a
        drain it is admitted (its handshake began before the listener closed) but refuses
        streams."""
        if draining:
            conn.refuse_new_streams()
        limit = self._max_tunnels()
        if len(self.live) >= limit:
            log.warning("refusing agent %s: limits.max_tunnels (%d) reached", conn.peer_name, limit)
            return False
        self.live.add(conn)
        self._metrics.connection_made()
        return True

    def forget(self, conn: ServerConnection) -> None:
        """``conn`` closed: drop it, keeping its bytes for the monotonic counters."""
        if conn in self.live:
            self.live.discard(conn)
            closed_in, closed_out = self._closed_bytes
            self._closed_bytes = (closed_in + conn.bytes_in, closed_out + conn.bytes_out)
        self._last_activity = max(self._last_activity, conn.last_activity)

    def open_streams(self) -> int:
        return sum(conn.active_streams for conn in self.live)

    def bytes(self) -> tuple[int, int]:
        """Payload bytes received and sent over every tunnel since the start."""
        closed_in, closed_out = self._closed_bytes
        return (
            closed_in + sum(c.bytes_in for c in self.live),
            closed_out + sum(c.bytes_out for c in self.live),
        )

    def activity(self) -> Activity:
        """Active agents, active streams and the last time a stream opened."""
        last = max([self._last_activity, *(c.last_activity for c in self.live)])
        return Activity(len(self.live), self.open_streams(), last)
