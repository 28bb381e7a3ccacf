"""Running a coroutine as a program: the event loop, signals, logging.

uvloop is used where it exists (never on Windows; ``FLUIDITY_NO_UVLOOP=1``
turns it off anywhere). The first SIGTERM or SIGINT (Ctrl-C; Ctrl-Break on
Windows) sets the stop event so the program can drain; a second one exits at
once. Where the loop cannot watch signals (Windows) a plain ``signal.signal``
handler hops onto the loop instead, and the previous handler is put back after.

Logs are one readable line per record, or one JSON object per line; either
way credentials that slip into a message (``Basic ...`` tokens, the password
in ``http://user:password@host``) are masked before it is written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
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


def _threadsafe(
    loop: asyncio.AbstractEventLoop, callback: Callable[[str], None], name: str
) -> Callable[[int, object], None]:
    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(callback, name)

    return handler


# Credentials that must never reach a log: HTTP auth tokens, and URL passwords.
_AUTH_TOKEN = re.compile(r"\b(Basic|Bearer|Digest|NTLM|Negotiate)(\s+)([A-Za-z0-9+/=._~-]{4,})")
_URL_PASSWORD = re.compile(r"(?<=://)([^/@\s:]+):[^/@\s]*@")


def redact(text: str) -> str:
    """``text`` with HTTP credentials and URL passwords replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1:***@", _AUTH_TOKEN.sub(_mask_token, text))


def _mask_token(match: re.Match[str]) -> str:
    scheme, space, token = match.groups()
    # A token looks encoded (digits, base64 punctuation, mixed case); a plain
    # word after a scheme name ("Negotiate handshake") is prose, kept as is.
    encoded = any(c.isdigit() or c in "+/=" for c in token) or (
        token != token.lower() and token != token.upper()
    )
    return f"{scheme}{space}***" if encoded else match.group(0)


class TextFormatter(logging.Formatter):
    """``12:03:04 INFO    fluidity.agent: message``, with secrets masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Readable one-line records on stderr (or JSON lines), from ``level`` up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncio reports every failed TLS handshake from hostile clients at ERROR;
    # the server logs its own one-line reason instead.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL if level != "debug" else logging.DEBUG)
    # The AWS SDK narrates at INFO ("Found credentials in environment variables"):
    # ours to say what matters, theirs only when debugging.
    for chatty in ("botocore", "boto3", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING if level != "debug" else logging.DEBUG)


def json_logging() -> bool:
    """Whether ``setup_logging`` chose JSON: messages for the user go there too."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
