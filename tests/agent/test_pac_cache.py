"""The agent keeps its PAC file as its caching headers say (5 minutes when they say
nothing) instead of fetching it for every connection.

A loopback HTTP server counts the fetches and answers with the caching headers a
test sets; the cache's monotonic clock is a number the test moves.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import ClassVar

import pytest

from fluidity.agent.pac import PAC_CACHE, PacCache, find_proxies
from fluidity.errors import PacError
from fluidity.protocol.proxyroute import DIRECT

WAIT = 10.0  # seconds: the bound on every network wait in this file
PAC = 'function FindProxyForURL(url, host) { return "DIRECT"; }'


class _CountingPac(http.server.BaseHTTPRequestHandler):
    headers_to_send: ClassVar[dict[str, str]] = {}
    status: ClassVar[int] = 200
    fetches: ClassVar[int] = 0

    def do_GET(self) -> None:
        type(self).fetches += 1
        body = PAC.encode()
        self.send_response(self.status)  # with a Date header
        for name, value in self.headers_to_send.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class PacServer:
    def __init__(self, url: str, handler: type[_CountingPac]) -> None:
        self.url = url
        self.handler = handler

    @property
    def fetches(self) -> int:
        return self.handler.fetches

    def answer_with(self, status: int = 200, **headers: str) -> None:
        self.handler.status = status
        self.handler.headers_to_send = {k.replace("_", "-"): v for k, v in headers.items()}


@pytest.fixture
def pac_server() -> Iterator[PacServer]:
    handler = type("Handler", (_CountingPac,), {"headers_to_send": {}, "fetches": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield PacServer(f"http://127.0.0.1:{server.server_address[1]}/proxy.pac", handler)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> PacCache:
    return PacCache(clock)


def fetch_n_times(cache: PacCache, url: str, times: int = 3) -> None:
    for _ in range(times):
        assert cache.script(url, timeout=WAIT) == PAC


def test_without_caching_headers_the_file_is_kept_five_minutes(
    cache: PacCache, clock: Clock, pac_server: PacServer
) -> None:
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 1
    clock.now += 299
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 1
    clock.now += 2
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 2


def test_max_age_is_honoured(cache: PacCache, clock: Clock, pac_server: PacServer) -> None:
    pac_server.answer_with(Cache_Control="max-age=30")
    fetch_n_times(cache, pac_server.url)
    clock.now += 29
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 1
    clock.now += 2
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 2


def test_a_max_age_longer_than_five_minutes_is_honoured(
    cache: PacCache, clock: Clock, pac_server: PacServer
) -> None:
    pac_server.answer_with(Cache_Control="max-age=3600")
    fetch_n_times(cache, pac_server.url)
    clock.now += 3599
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 1


@pytest.mark.parametrize("header", ["no-store", "no-cache", "max-age=0"])
def test_no_store_means_every_connection_fetches(
    cache: PacCache, pac_server: PacServer, header: str
) -> None:
    pac_server.answer_with(Cache_Control=header)
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 3


def test_expires_is_honoured(cache: PacCache, clock: Clock, pac_server: PacServer) -> None:
    # Expires is read against the response's own Date (sent by the server): 60 s.
    pac_server.answer_with(Expires=formatdate(time.time() + 60, usegmt=True))
    fetch_n_times(cache, pac_server.url)
    clock.now += 50
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 1
    clock.now += 15
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 2


def test_an_expires_in_the_past_means_every_connection_fetches(
    cache: PacCache, pac_server: PacServer
) -> None:
    pac_server.answer_with(Expires="Thu, 01 Jan 1970 00:00:00 GMT")
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 3


def test_a_failed_fetch_is_not_kept(cache: PacCache, pac_server: PacServer) -> None:
    pac_server.answer_with(status=503)
    for _ in range(2):
        with pytest.raises(PacError, match="HTTP 503"):
            cache.script(pac_server.url, timeout=WAIT)
    pac_server.answer_with()
    fetch_n_times(cache, pac_server.url)
    assert pac_server.fetches == 3


def test_a_local_pac_file_is_kept_five_minutes_or_until_it_changes(
    cache: PacCache, clock: Clock, tmp_path: Path
) -> None:
    pac = tmp_path / "proxy.pac"
    pac.write_text(PAC)
    fetch_n_times(cache, pac.as_uri())
    assert cache.fetches == 1
    changed = PAC.replace("DIRECT", "PROXY proxy.corp.example:3128")
    pac.write_text(changed)
    stat = pac.stat()
    os.utime(pac, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # surely newer
    assert cache.script(pac.as_uri(), timeout=WAIT) == changed
    assert cache.fetches == 2
    clock.now += 299
    cache.script(pac.as_uri(), timeout=WAIT)
    assert cache.fetches == 2
    clock.now += 2
    cache.script(pac.as_uri(), timeout=WAIT)
    assert cache.fetches == 3


async def test_the_agent_fetches_once_for_many_connections(pac_server: PacServer) -> None:
    PAC_CACHE.clear()
    try:
        for _ in range(5):
            choices = await find_proxies(pac_server.url, "a.example", 443, timeout=WAIT)
            assert choices == [DIRECT]
        assert pac_server.fetches == 1
    finally:
        PAC_CACHE.clear()
