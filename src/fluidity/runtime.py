"""Running a coroutine as a program: the event loop, signals, logging.

uvloop is used where it exists (never on Windows). The first SIGTERM or
SIGINT (Ctrl-C; Ctrl-Break on Windows) sets the stop event so the program can
drain; a second one exits at once. SIGHUP asks the server to reload its
certificates (``on_reload_signal``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_SIGNALS = ("SIGTERM", "SIGINT", "SIGBREAK")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where available and not disabled by FLUIDITY_NO_UVLOOP; else asyncio's."""
    if sys.platform == "win32" or os.environ.get("FLUIDITY_NO_UVLOOP"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Callable[[asyncio.Event], Coroutine[Any, Any, T]]) -> T:
    """Run ``main(stop)`` to completion; signals set ``stop``, a second one exits."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_with_signals(main))


async def _with_signals(main: Callable[[asyncio.Event], Coroutine[Any, Any, T]]) -> T:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(name: str) -> None:
        if stop.is_set():
            logging.getLogger("fluidity").warning("%s again: exiting at once", name)
            os._exit(1)
        logging.getLogger("fluidity").info("%s: shutting down gracefully", name)
        stop.set()

    installed = []
    for name in _SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            loop.add_signal_handler(signum, on_signal, name)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            # Windows: no loop signal handlers; a plain handler hops onto the loop.
            signal.signal(signum, _threadsafe(loop, on_signal, name))
    try:
        return await main(stop)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def on_reload_signal(callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback`` on the running loop at every SIGHUP; return the function that stops it.

    Where there is no SIGHUP (Windows) this does nothing: the server's file
    polling still reloads changed certificates.
    """
    loop = asyncio.get_running_loop()
    signum = getattr(signal, "SIGHUP", None)
    if signum is None:
        return lambda: None
    try:
        loop.add_signal_handler(signum, callback)
    except (NotImplementedError, RuntimeError, ValueError):
        return lambda: None

    def stop() -> None:
        loop.remove_signal_handler(signum)

    return stop


def _threadsafe(
    loop: asyncio.AbstractEventLoop, callback: Callable[[str], None], name: str
) -> Callable[[int, object], None]:
    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(callback, name)

    return handler


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Readable one-line records on stderr (or JSON lines)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncio reports every failed TLS handshake from hostile clients at ERROR;
    # the server logs its own one-line reason instead.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL if level != "debug" else logging.DEBUG)
