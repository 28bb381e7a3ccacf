"""Running a coroutine as a program: the event loop and its signals.

uvloop is used where it exists (never on Windows; ``FLUIDITY_NO_UVLOOP=1``
turns it off anywhere). The first SIGTERM or SIGINT (Ctrl-C; Ctrl-Break on
Windows) sets the stop event so the program can drain; a second one exits at
once. Where the loop cannot watch signals (Windows) a plain ``signal.signal``
handler hops onto the loop instead, and the previous handler is put back after.
SIGHUP asks the server to reload its certificates (``on_reload_signal``).

Logging is set up by :mod:`fluidity.observe.logs`.
"""

from __future__ import annotations

import asyncio
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
        import uvloop  # windows: never reached there (above), and optional anywhere
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
    replaced: dict[int, Any] = {}
    for name in _SIGNALS:
        signum = getattr(signal, name, None)  # SIGBREAK is Windows-only, SIGTERM nearly so
        if signum is None:
            continue
        try:
            # windows: the Proactor loop raises NotImplementedError: handled below
            loop.add_signal_handler(signum, on_signal, name)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            # Windows: no loop signal handlers; a plain handler hops onto the loop.
            replaced[signum] = signal.signal(signum, _threadsafe(loop, on_signal, name))
    try:
        return await main(stop)
    finally:
        for signum in installed:  # windows: empty there (nothing was installed on the loop)
            loop.remove_signal_handler(signum)
        for signum, previous in replaced.items():
            signal.signal(signum, previous)


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
        # windows: unreached there (no SIGHUP, above); a loop without handlers raises
        loop.add_signal_handler(signum, callback)
    except (NotImplementedError, RuntimeError, ValueError):
        return lambda: None

    def stop() -> None:
        loop.remove_signal_handler(signum)  # windows: only after add_signal_handler worked

    return stop


def _threadsafe(
    loop: asyncio.AbstractEventLoop, callback: Callable[[str], None], name: str
) -> Callable[[int, object], None]:
    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(callback, name)

    return handler
