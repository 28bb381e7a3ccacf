"""Serving CONNECT streams: each one is a dial task, then a ``Splice``.

``StreamService.on_stream_request`` is the ``on_stream_request`` callback of
every server connection. For each CONNECT it starts one task that dials the
target through the ``Dialer`` (policy, resolution, retries, circuit breaker),
then either rejects the stream with the dialer's status or accepts it and
attaches a ``Splice``, which carries the bytes from then on with no task at all.

The service owns what is in flight, the dial tasks and the live splices, so a
shutdown can wait for the dials and then ``abort`` whatever is left.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fluidity.errors import StreamError, TargetError
from fluidity.observe.metrics import Metrics
from fluidity.server.dialer import Dialer
from fluidity.transport.connection import TunnelConnection
from fluidity.transport.splice import Splice

log = logging.getLogger(__name__)


class StreamService:
    """Dials each requested target and splices it to its stream; counts and metrics."""

    def __init__(self, dialer: Dialer, metrics: Metrics) -> None:
        self.dialer = dialer
        self.metrics = metrics
        self.requested = 0  # CONNECT streams the agents asked for, served or not
        self.dials: set[asyncio.Task[None]] = set()
        # Each live splice with the authority its stream asked for: a policy reload
        # with targets.apply_to_open judges them again.
        self.splices: dict[Splice, str] = {}

    def on_stream_request(self, conn: TunnelConnection, stream_id: int, authority: str) -> None:
        """Start serving ``authority`` on ``conn``'s stream ``stream_id`` (a task)."""
        self.requested += 1
        task = asyncio.get_running_loop().create_task(self._serve(conn, stream_id, authority))
        self.dials.add(task)
        task.add_done_callback(self.dials.discard)

    def abort(self) -> None:
        """Cancel every dial still in flight and close every live splice."""
        for task in list(self.dials):
            task.cancel()
        for splice in list(self.splices):
            splice.close()

    def _forget(self, splice: Splice) -> None:
        self.splices.pop(splice, None)

    async def _serve(self, conn: TunnelConnection, stream_id: int, authority: str) -> None:
        splice = Splice(on_close=self._forget)
        started = time.monotonic()
        try:
            transport, _ = await self.dialer.dial(authority, lambda: splice)
        except TargetError as exc:
            log.info("%s: CONNECT %s -> %d: %s", conn.peer_name, authority, exc.status, exc)
            elapsed = time.monotonic() - started
            self.metrics.stream_refused(exc.kind, exc.status, elapsed, authority, str(exc))
            conn.reject(stream_id, exc.status, str(exc))
            return
        try:
            stream = conn.accept(stream_id, splice)
        except StreamError:
            transport.abort()  # the agent gave up while we dialled
            return
        self.splices[splice] = authority
        splice.attach(stream)
        self.metrics.stream_opened("connect", time.monotonic() - started, authority)
        log.debug("%s: CONNECT %s -> 200", conn.peer_name, authority)
