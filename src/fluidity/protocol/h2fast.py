"""h2's ``H2Connection`` with stream counting that stays cheap at 10,000 streams.

h2 counts open streams (``_open_streams``) by walking *every* stream it knows,
on every stream opened in either direction: the agent's ``send_headers`` and the
server's receipt of a HEADERS frame each check ``MAX_CONCURRENT_STREAMS`` that
way. The walk also removes closed streams, and is the only thing that does.
With thousands of concurrent tunnels that makes opening a stream O(n), and
opening n tunnels O(n^2): 10,000 idle tunnels took 46 s to open.

``CountingH2Connection`` keeps h2's behaviour and makes it amortised O(1):

* The count h2 compares with the limit is an *upper bound*: the streams found
  not closed by the last sweep plus every stream created since. A stream never
  reopens, so the bound is never below the true count. While ``bound + 1`` is
  within the limit h2's check passes exactly as it would with the true count;
  only when it is not is a sweep done and the exact count returned, so h2
  refuses a stream exactly when it would have refused it anyway.
* Closed streams are swept (moved to ``_closed_streams`` as h2 does) once the
  stream table has grown by half since the last sweep: each stream created
  pays for a bounded share of one walk, and at most about a third of the
  table is ever dead streams.

Pushed streams bypass ``_begin_new_stream``; nobody here pushes (the server
never does and the agent disables push), so the bound holds.

The two methods replaced are h2 internals. At import the module checks that
they (and the stream attributes the sweep reads) still have the shape this was
written against; if a new h2 release changed them, the class keeps h2's own
counting (correct, O(n) again) and a debug log line says why. CI runs the
equivalence tests on the lowest and newest h2 allowed.
"""

from __future__ import annotations

import logging
from typing import Any

import h2.config
import h2.connection
import h2.stream

from fluidity.protocol.patchcheck import parameter_names

log = logging.getLogger(__name__)

SWEEP_MIN = 64  # below this many streams a sweep is too cheap to defer


class CountingH2Connection(h2.connection.H2Connection):
    """``h2.connection.H2Connection`` with amortised O(1) open-stream counting."""

    def __init__(self, config: Any) -> None:
        super().__init__(config=config)
        self._live = [0, 0]  # streams not closed at the last sweep, by stream-id parity
        self._created = [0, 0]  # streams created since the last sweep, by parity
        self._sweep_at = SWEEP_MIN

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        self._created[stream_id % 2] += 1
        if len(self.streams) >= self._sweep_at:
            self._sweep()
        return stream

    def _open_streams(self, remainder: int) -> int:
        bound: int = self._live[remainder] + self._created[remainder]
        if bound + 1 <= self._limit(remainder):
            return bound
        return self._sweep()[remainder]

    def _limit(self, remainder: int) -> int:
        outbound = remainder == int(self.config.client_side)
        settings = self.remote_settings if outbound else self.local_settings
        return int(settings.max_concurrent_streams)

    def _sweep(self) -> list[int]:
        """Drop closed streams as h2 does; return the exact open counts by parity."""
        live, opened, closed = [0, 0], [0, 0], []
        for stream_id, stream in self.streams.items():
            if stream.closed:
                closed.append(stream_id)
                continue
            live[stream_id % 2] += 1
            if stream.open:
                opened[stream_id % 2] += 1
        for stream_id in closed:
            self._closed_streams[stream_id] = self.streams.pop(stream_id).closed_by
        self._live, self._created = live, [0, 0]
        self._sweep_at = max(SWEEP_MIN, len(self.streams) * 3 // 2)
        return opened


def shape_problem() -> str | None:
    """Why ``CountingH2Connection`` does not fit the installed h2, or ``None``."""
    base: Any = h2.connection.H2Connection
    expected = {
        "_begin_new_stream": ["self", "stream_id", "allowed_ids"],
        "_open_streams": ["self", "remainder"],
    }
    for name, parameters in expected.items():
        if parameter_names(getattr(base, name, None)) != parameters:
            return f"H2Connection.{name} has another signature"
    probe = base(config=h2.config.H2Configuration(client_side=True))
    if not isinstance(getattr(probe, "streams", None), dict):
        return "H2Connection.streams is not a dict"
    if not hasattr(probe, "_closed_streams"):
        return "H2Connection._closed_streams is missing"
    stream: Any = h2.stream.H2Stream
    names = ("open", "closed", "closed_by")
    if not all(isinstance(getattr(stream, name, None), property) for name in names):
        return "H2Stream.open / closed / closed_by are not properties"
    return None


SHAPE_PROBLEM = shape_problem()
if SHAPE_PROBLEM is not None:
    # h2's own counting stays in force: the subclass only adds unused attributes.
    log.debug("h2: cheap stream counting not used (%s)", SHAPE_PROBLEM)
    del CountingH2Connection._begin_new_stream
    del CountingH2Connection._open_streams
