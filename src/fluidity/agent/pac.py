"""Which proxy to use, when a PAC file says: fetch it, run it, parse its answer.

Three sources say how to reach the server: a proxy URL, the ``HTTPS_PROXY``/
``NO_PROXY`` environment variables (both parsed in :mod:`fluidity.protocol.proxyroute`),
or a PAC file, fetched and run here. Each yields the same answer: an ordered list
of :class:`ProxyChoice`.

Many companies publish a PAC file (``FindProxyForURL(url, host)`` in JavaScript)
instead of one proxy address; the answer may differ per destination and change
over time, so the agent evaluates it again before every connect
(:func:`find_proxies`). The file itself is kept (:class:`PacCache`) as long as
its HTTP caching headers allow (``Cache-Control: max-age``, ``no-store``,
``Expires``; :mod:`fluidity.protocol.httpcache`), at most a day, and 5 minutes
when they say nothing; a ``file://`` PAC file is kept 5 minutes, or until the
file changes. A fetch that fails is not kept: the next connect tries again.

The JavaScript runs in ``pypac``'s sandbox (the ``dukpy`` interpreter, with the
standard PAC built-ins such as ``shExpMatch``, ``isInNet``, ``dnsDomainIs``);
fetching and evaluating block, so both run in a worker thread.

The PAC file is fetched with the standard library and *without* any proxy: it is
published inside the corporate network, where the proxy is not needed.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from fluidity.errors import PacError
from fluidity.protocol.httpcache import freshness_lifetime
from fluidity.protocol.proxyroute import ProxyChoice, parse_pac_result

# A PAC file is a page of JavaScript; anything much larger is not one.
MAX_PAC_BYTES = 1024 * 1024
DEFAULT_PAC_LIFETIME = 300.0  # seconds a PAC file is kept when its headers say nothing
MAX_PAC_LIFETIME = 24 * 3600.0  # and at most, whatever they say


@dataclass(frozen=True)
class FetchedPac:
    """A PAC file as fetched: its text, how long it stays fresh, and, for a local
    file, its modification time (None for http(s))."""

    script: str
    lifetime: float
    mtime_ns: int | None = None


def load_pac_script(location: str, *, timeout: float) -> str:
    """Fetch the PAC file at an ``http(s)://`` or ``file://`` URL (blocking).

    The text is decoded as UTF-8 (PAC files are ASCII in practice). Raises
    :class:`PacError` when the file cannot be had.
    """
    return fetch_pac(location, timeout=timeout).script


def fetch_pac(location: str, *, timeout: float) -> FetchedPac:
    """Fetch the PAC file at ``location`` with how long to keep it (blocking); see
    :func:`load_pac_script`."""
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme not in ("http", "https", "file"):
        raise PacError(f"PAC location {location!r} must be an http://, https:// or file:// URL")
    # No proxy for the PAC file itself (see the module docstring).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    mtime = _mtime_ns(location) if scheme == "file" else None
    try:
        with opener.open(location, timeout=timeout) as response:
            raw: bytes = response.read(MAX_PAC_BYTES + 1)
            headers = response.headers
    except (OSError, ValueError) as exc:
        raise PacError(f"cannot fetch the PAC file {location}: {_describe(exc)}") from None
    if len(raw) > MAX_PAC_BYTES:
        raise PacError(f"the PAC file {location} is over {MAX_PAC_BYTES} bytes; is it one?")
    script = raw.decode("utf-8", errors="replace")
    if scheme == "file":
        return FetchedPac(script, DEFAULT_PAC_LIFETIME, mtime)
    lifetime = freshness_lifetime(
        cache_control=headers.get("Cache-Control"),
        expires=headers.get("Expires"),
        date=headers.get("Date"),
        now=time.time(),
        default=DEFAULT_PAC_LIFETIME,
        cap=MAX_PAC_LIFETIME,
    )
    return FetchedPac(script, lifetime)


class PacCache:
    """PAC files by location, each kept while fresh; safe to use from worker threads.

    One fetch at a time: connections that need the file together wait for one
    fetch, then share it. ``clock`` is a monotonic clock (replaceable in tests);
    ``fetches`` counts the fetches made.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[FetchedPac, float]] = {}  # location: (fetched, until)
        self.fetches = 0

    def script(self, location: str, *, timeout: float) -> str:
        """The PAC file at ``location``, fetched unless a fresh copy is kept (blocking)."""
        with self._lock:
            kept = self._kept.get(location)
            if kept is not None and self._fresh(location, *kept):
                return kept[0].script
            self._kept.pop(location, None)
            self.fetches += 1
            fetched = fetch_pac(location, timeout=timeout)
            if fetched.lifetime > 0:
                self._kept[location] = (fetched, self._clock() + fetched.lifetime)
            return fetched.script

    def clear(self) -> None:
        """Forget every kept file."""
        with self._lock:
            self._kept.clear()

    def _fresh(self, location: str, fetched: FetchedPac, until: float) -> bool:
        if self._clock() >= until:
            return False
        return fetched.mtime_ns is None or _mtime_ns(location) == fetched.mtime_ns


PAC_CACHE = PacCache()
"""The agent's PAC files: one cache per process (the agent reaches one server)."""


def evaluate_pac(script: str, url: str, host: str) -> str:
    """Run ``FindProxyForURL(url, host)`` from ``script`` and return its answer (blocking)."""
    # Imported here: pypac brings requests along, which only PAC users should pay for.
    from dukpy import JSRuntimeError  # type: ignore[import-untyped]
    from pypac.parser import MalformedPacError, PACFile  # type: ignore[import-untyped]

    try:
        answer = PACFile(script).find_proxy_for_url(url, host)
    except (MalformedPacError, JSRuntimeError) as exc:
        raise PacError(f"the PAC file failed for {url}: {exc}") from None
    if not isinstance(answer, str):
        raise PacError(f"the PAC file answered {answer!r} for {url}, which is not a string")
    return answer


def pac_url_for(host: str, port: int) -> str:
    """The URL the PAC file is asked about: browsers pass only scheme, host and port."""
    authority = f"[{host}]" if ":" in host else host
    return f"https://{authority}:{port}/"


def find_proxies_blocking(
    location: str, host: str, port: int, *, timeout: float
) -> list[ProxyChoice]:
    """Evaluate the PAC file (kept or fetched) for a connection to ``host:port`` (blocking)."""
    script = PAC_CACHE.script(location, timeout=timeout)
    return parse_pac_result(evaluate_pac(script, pac_url_for(host, port), host))


# The timeout is a parameter (not the caller's asyncio.timeout) because it also
# bounds the blocking fetch inside the worker thread, which cancellation cannot reach.
async def find_proxies(
    location: str,
    host: str,
    port: int,
    *,
    timeout: float,  # noqa: ASYNC109
) -> list[ProxyChoice]:
    """The PAC file's ordered proxy list for ``https://host:port/``, freshly evaluated.

    Runs in a worker thread. A PAC file whose JavaScript never returns leaves that
    thread behind, but the caller gets :class:`PacError` after ``timeout`` seconds.
    """
    work = asyncio.to_thread(find_proxies_blocking, location, host, port, timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError:
        raise PacError(f"the PAC file {location} gave no answer within {timeout:g} s") from None


def _mtime_ns(location: str) -> int | None:
    """A ``file://`` URL's modification time; None if it cannot be read."""
    path = urllib.request.url2pathname(urllib.parse.urlsplit(location).path)
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
