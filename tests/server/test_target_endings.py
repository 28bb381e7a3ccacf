"""How the server's connection to a target ends, seen at the origin: FIN after a complete
exchange, RST for a cut transfer.

A real client (httpx, curl) goes through the agent and the tunnel to an
``EndingOrigin``, which records, per connection, whether a read saw an orderly end
(FIN) or a reset (RST).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import httpx
import pytest

from fluidity.pki.certs import QuickstartPKI
from support.endings import EndingOrigin
from support.harness import Tunnel, start_tunnel
from support.transfers import wait_for


@pytest.fixture
async def ending_origin() -> AsyncIterator[EndingOrigin]:
    origin = await EndingOrigin().start()
    try:
        yield origin
    finally:
        await origin.close()


@pytest.fixture(params=["tunnel", "direct"])
async def route(request: pytest.FixtureRequest, pki: QuickstartPKI) -> AsyncIterator[Tunnel]:
    """A tunnel; with ``direct``, the agent reaches 127.0.0.1 itself (the ``direct:`` list)."""
    direct = ("127.0.0.1",) if request.param == "direct" else ()
    tunnel = await start_tunnel(pki, direct=direct)
    try:
        yield tunnel
    finally:
        await tunnel.close()


async def ended(origin: EndingOrigin, count: int = 1) -> list[str]:
    """The endings, once ``count`` connections have ended."""
    await wait_for(lambda: len(origin.endings) >= count, within=10)
    return origin.endings


async def test_a_keep_alive_connection_closed_after_complete_exchanges_ends_with_fin(
    route: Tunnel, ending_origin: EndingOrigin
) -> None:
    async with httpx.AsyncClient(proxy=route.proxy, timeout=10) as client:
        for size in (10, 100_000):
            response = await client.get(f"{ending_origin.url}/bytes/{size}")
            assert len(response.content) == size
    # httpx closed its kept-alive connection to the agent between requests.
    assert await ended(ending_origin) == ["fin"]
    assert ending_origin.served == 2


async def test_a_transfer_the_client_cuts_ends_with_rst(
    route: Tunnel, ending_origin: EndingOrigin
) -> None:
    async with (
        httpx.AsyncClient(proxy=route.proxy, timeout=10) as client,
        client.stream("GET", f"{ending_origin.url}/bytes/{64 * 1024 * 1024}") as response,
    ):
        async for _ in response.aiter_raw():
            break  # one piece, then the client walks away mid-body
    assert await ended(ending_origin) == ["rst"]
    assert ending_origin.served == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("tunnelled", [False, True], ids=["forwarded", "connect"])
async def test_curl_fetching_twice_on_one_connection_leaves_with_fin(
    tunnel: Tunnel, ending_origin: EndingOrigin, tunnelled: bool
) -> None:
    """curl reuses its connection for the second URL, then exits: an orderly close,
    whether its requests were forwarded or carried in a CONNECT tunnel (``-p``)."""
    url = f"{ending_origin.url}/bytes/1000"
    args = ["-sS", "-x", tunnel.proxy, *(["-p"] if tunnelled else []), url, url]
    curl = await asyncio.create_subprocess_exec(
        "curl", *args, "-o", "/dev/null", "-o", "/dev/null", stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(20):
        _, stderr = await curl.communicate()
    assert curl.returncode == 0, stderr
    assert await ended(ending_origin) == ["fin"]
    assert ending_origin.served == 2
