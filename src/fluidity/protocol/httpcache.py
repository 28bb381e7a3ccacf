"""How long a fetched document stays fresh, from its HTTP caching headers. Sans-I/O.

The little of RFC 9111 that a private cache of one small document (a PAC file)
needs: ``Cache-Control: no-store`` or ``no-cache`` means fetch it every time;
``max-age=N`` is N seconds; otherwise ``Expires`` (minus ``Date``, or minus now
without one); otherwise a default. Every lifetime is bounded by ``cap``. An
``Expires`` or ``max-age`` that cannot be read means stale, as the RFC says.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

__all__ = ["freshness_lifetime"]


def freshness_lifetime(
    *,
    cache_control: str | None,
    expires: str | None,
    date: str | None,
    now: float,
    default: float,
    cap: float,
) -> float:
    """Seconds the response stays fresh (0: do not keep it); ``now`` is wall-clock time."""
    directives = _directives(cache_control or "")
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    if "max-age" in directives:
        age = directives["max-age"]
        return min(float(age), cap) if age.isdigit() else 0.0
    if expires is not None:
        until = _timestamp(expires)
        base = _timestamp(date) if date is not None else None
        if until is None:
            return 0.0
        return min(max(until - (now if base is None else base), 0.0), cap)
    return min(default, cap)


def _directives(header: str) -> dict[str, str]:
    """``Cache-Control`` as {directive: argument}; names lowercased, quotes dropped."""
    found: dict[str, str] = {}
    for part in header.split(","):
        name, _, argument = part.strip().partition("=")
        if name:
            found.setdefault(name.strip().lower(), argument.strip().strip('"'))
    return found


def _timestamp(value: str) -> float | None:
    """An HTTP date as a POSIX timestamp; None if it is not one."""
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None  # HTTP dates are GMT; one without a zone is not an HTTP date
    return moment.timestamp()
