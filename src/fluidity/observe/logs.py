"""Log setup: one readable line per record, or one JSON object per line.

Either way credentials that slip into a message (``Basic ...`` tokens, the
password in ``http://user:password@host``) are masked before it is written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys

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
