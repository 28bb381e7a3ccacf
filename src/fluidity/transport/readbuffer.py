"""One read buffer per thread, lent to whichever connection is reading.

A buffered protocol's ``get_buffer`` hands the transport a buffer to read into,
and ``buffer_updated`` says how much arrived; the two come in one callback of
the event loop, and our protocols hand the bytes on (h2 copies what it is
given, the WebSocket link copies before it parses) before returning. So the
buffer is only busy between the two calls, and one buffer can serve every
connection of a loop, instead of 256 KiB held by each tunnel connection for a
read that may come once a minute.

``lend`` gives the thread's buffer if it is free, or a new one if it is not (a
protocol that delivers to another synchronously, as in-memory links in tests
do, or a read that never completed); ``give_back`` makes the buffer free again.
Whatever is given back is the next one lent, so an extra buffer is kept at most
until the next read.
"""

from __future__ import annotations

import threading

# uvloop's TLS layer reads at most 256 KiB at a time.
READ_BUFFER = 256 * 1024

_free = threading.local()


def lend() -> memoryview:
    """A buffer of ``READ_BUFFER`` bytes for one read; hand it back with ``give_back``."""
    buffer: memoryview | None = getattr(_free, "buffer", None)
    if buffer is None:
        return memoryview(bytearray(READ_BUFFER))
    _free.buffer = None
    return buffer


def give_back(buffer: memoryview) -> None:
    """``buffer`` is no longer read from: the next ``lend`` may give it out again."""
    _free.buffer = buffer
