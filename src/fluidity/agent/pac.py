"""Which proxy to use, when a PAC file says: fetch it, run it, parse its answer.

Three sources say how to reach the server: a proxy URL, the ``HTTPS_PROXY``/
``NO_PROXY`` environment variables (both parsed in :mod:`fluidity.protocol.proxyroute`),
or a PAC file, fetched and run here. Each yields the same answer: an ordered list
of :class:`ProxyChoice`.

Many companies publish a PAC file (``FindProxyForURL(url, host)`` in JavaScript)
instead of one proxy address; the answer may differ per destination and change
over time, so the agent fetches and evaluates it again before every connect
(:func:`find_proxies`). The JavaScript runs in ``pypac``'s sandbox (the ``dukpy``
interpreter, with the standard PAC built-ins such as ``shExpMatch``, ``isInNet``,
``dnsDomainIs``); fetching and evaluating block, so both run in a worker thread.

The PAC file is fetched with the standard library and *without* any proxy: it is
published inside the corporate network, where the proxy is not needed.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request

from fluidity.errors import PacError
from fluidity.protocol.proxyroute import ProxyChoice, parse_pac_result

# A PAC file is a page of JavaScript; anything much larger is not one.
MAX_PAC_BYTES = 1024 * 1024


def load_pac_script(location: str, *, timeout: float) -> str:
    """Fetch the PAC file at an ``http(s)://`` or ``file://`` URL (blocking).

    The text is decoded as UTF-8 (PAC files are ASCII in practice). Raises
    :class:`PacError` when the file cannot be had.
    """
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme not in ("http", "https", "file"):
        raise PacError(f"PAC location {location!r} must be an http://, https:// or file:// URL")
    # No proxy for the PAC file itself (see the module docstring).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(location, timeout=timeout) as response:
            raw: bytes = response.read(MAX_PAC_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise PacError(f"cannot fetch the PAC file {location}: {_describe(exc)}") from None
    if len(raw) > MAX_PAC_BYTES:
        raise PacError(f"the PAC file {location} is over {MAX_PAC_BYTES} bytes; is it one?")
    return raw.decode("utf-8", errors="replace")


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
    """Fetch and evaluate the PAC file for a connection to ``host:port`` (blocking)."""
    script = load_pac_script(location, timeout=timeout)
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
    """The PAC file's ordered proxy list for ``https://host:port/``, freshly fetched.

    Runs in a worker thread. A PAC file whose JavaScript never returns leaves that
    thread behind, but the caller gets :class:`PacError` after ``timeout`` seconds.
    """
    work = asyncio.to_thread(find_proxies_blocking, location, host, port, timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError:
        raise PacError(f"the PAC file {location} gave no answer within {timeout:g} s") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
