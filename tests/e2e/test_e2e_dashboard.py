"""The dashboards in a real browser: headless Chromium (through chromedriver) opens the
agent's page and the server's while traffic flows and a target fails.

It checks what a person would look for: the throughput graph moves, the failed
request shows in the error log with the words its client got and the fix, the
"Reconnect now" button brings a fresh tunnel, and the server's page lists the
agent and the refusals. The screenshots land in the test's directory; with
``FLUIDITY_SCREENSHOTS=1`` they are also written to docs/ (docs/observability.md
shows them), after a longer run of traffic so that the graphs have a shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fluidity.config.server import TargetsConfig
from fluidity.config.values import Address
from fluidity.observe.dashboard import FIXES
from fluidity.pki.certs import QuickstartPKI
from support.harness import LOOPBACK, Tunnel, start_tunnel
from support.origins import RecordingOrigin
from support.webdriver import CHROMEDRIVER, CHROMIUM, Browser, chromium

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="chromium and chromedriver are not installed"
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
TRAFFIC_BYTES = 400_000  # per request of the background traffic


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


DEAD_PORT = closed_port()


SCREENSHOTS = os.environ.get("FLUIDITY_SCREENSHOTS") == "1"
HISTORY_FOR_SCREENSHOTS = 45  # seconds of traffic before the pictures for docs/


@pytest.fixture
async def second_origin() -> AsyncIterator[RecordingOrigin]:
    found = await RecordingOrigin().start()
    try:
        yield found
    finally:
        await found.close()


@pytest.fixture
async def watched(
    pki: QuickstartPKI, origin: RecordingOrigin, second_origin: RecordingOrigin
) -> AsyncIterator[Tunnel]:
    """A tunnel whose server has a metrics listener and admits the origins' ports and one
    port where nothing listens (the failing target); anything else is refused by policy."""
    ports = (origin.port, second_origin.port, DEAD_PORT)
    targets = TargetsConfig(allow=("127.0.0.0/8",), ports=ports)
    tunnel = await start_tunnel(
        pki, server_changes={"metrics": Address(LOOPBACK, 0), "targets": targets}
    )
    try:
        yield tunnel
    finally:
        await tunnel.close()


@contextlib.asynccontextmanager
async def traffic(tunnel: Tunnel, *origins: RecordingOrigin) -> AsyncIterator[None]:
    """Downloads through the agent from each origin, one after another, in sizes that
    vary (so the graph has a shape), until the block ends."""

    async def flow(origin: RecordingOrigin, share: int) -> None:
        async with httpx.AsyncClient(proxy=tunnel.proxy, trust_env=False, timeout=10) as client:
            for n in range(2000):  # bounded; the test ends long before
                size = TRAFFIC_BYTES * (1 + (n // 8 + share) % 4) // share
                with contextlib.suppress(httpx.HTTPError):  # "Reconnect now" cuts one short
                    await client.get(f"{origin.url}/bytes/{size}")
                await asyncio.sleep(0.2)  # a steady trickle, not a saturated link

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(flow(o, share)) for share, o in enumerate(origins, 1)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def failing_requests(tunnel: Tunnel) -> tuple[httpx.Response, httpx.Response]:
    """One target that does not answer (502), one the policy refuses (403)."""
    async with httpx.AsyncClient(proxy=tunnel.proxy, trust_env=False, timeout=20) as client:
        refused = await client.get(f"http://{LOOPBACK}:1/")
        failed = await client.get(f"http://{LOOPBACK}:{DEAD_PORT}/")
    return failed, refused


async def save(browser: Browser, name: str, tmp_path: Path, width: int = 1280) -> None:
    """A screenshot of the whole page: the window is made as tall as the page first."""
    height = await browser.run("return document.documentElement.scrollHeight")
    await browser.resize(width, int(height))
    inner = await browser.run("return window.innerHeight")
    if inner < height:  # the window's frame took some: grow by that much
        await browser.resize(width, int(2 * height - inner))
    png = await browser.screenshot()
    assert png.startswith(b"\x89PNG"), "a screenshot is a PNG"
    (tmp_path / name).write_bytes(png)
    if SCREENSHOTS:
        (DOCS / name).write_bytes(png)


async def test_agent_and_server_dashboards(
    watched: Tunnel, origin: RecordingOrigin, second_origin: RecordingOrigin, tmp_path: Path
) -> None:
    agent_page = f"http://{LOOPBACK}:{watched.proxy_port}/"
    metrics = watched.server.metrics_server
    assert metrics is not None and metrics.address is not None
    server_page = f"http://{LOOPBACK}:{metrics.address[1]}/"
    failed, refused = await failing_requests(watched)
    assert (failed.status_code, refused.status_code) == (502, 403)
    async with traffic(watched, origin, second_origin), chromium() as browser:
        await browser.open(agent_page)
        await graph_moves(browser)
        await error_shows_with_its_fix(browser, failed.text.strip(), "unreachable")
        await error_shows_with_its_fix(browser, refused.text.strip(), "policy_refused")
        if SCREENSHOTS:
            await browser.wait_for(
                "const p = document.querySelector('path[data-key=in]'); "
                f"return p && p.getAttribute('d').split('L').length >= {HISTORY_FOR_SCREENSHOTS}",
                within=HISTORY_FOR_SCREENSHOTS + 20,
            )
        await save(browser, "dashboard-agent.png", tmp_path)
        await reconnect_now(browser, watched)
        await browser.open(server_page)
        await server_shows_the_agent(browser)
        await save(browser, "dashboard-server.png", tmp_path)
        await browser.resize(390, 800)
        await browser.open(agent_page)
        await browser.wait_for("return document.querySelector('#tunnel-state')")
        overflow = await browser.run(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, "the page fits a phone's width without scrolling sideways"
        await save(browser, "dashboard-agent-phone.png", tmp_path, width=390)


async def graph_moves(browser: Browser) -> None:
    """The inbound line changes from one poll to the next and shows traffic."""
    path = "return (document.querySelector('path[data-key=in]') || {}).getAttribute?.('d')"
    first = await browser.wait_for(path)
    await browser.wait_for(f"const d = (() => {{ {path} }})(); return d && d !== {first!r}")
    rate = await browser.wait_for(
        "const t = document.querySelector('#rate-in'); "
        "return t && !t.textContent.startsWith('0 B') && t.textContent"
    )
    assert rate.endswith("/s")


async def error_shows_with_its_fix(browser: Browser, body: str, kind: str) -> None:
    """An error is in the log with the words its client got, word for word, and its fix."""
    text = await browser.wait_for(
        "return [...document.querySelectorAll('#errors .err')].map((e) => e.innerText)"
        f".find((t) => t.includes({body!r}))"
    )
    assert FIXES[kind] in text
    assert f"· {kind} ·" in text


async def reconnect_now(browser: Browser, tunnel: Tunnel) -> None:
    """The button drops the tunnel and a new one comes up at once: the page says so."""
    first = tunnel.agent.keeper.connection
    await browser.click("#reconnect")
    await browser.wait_for("return document.querySelector('#reconnects')?.textContent === '1'")
    await browser.wait_for(
        "return document.querySelector('#tunnel-state')?.textContent === 'connected'"
    )
    action = await browser.run("return document.querySelector('#action').textContent")
    assert "reconnect" in action
    assert tunnel.agent.keeper.connection is not first
    assert tunnel.agent.keeper.reconnects == 1


async def server_shows_the_agent(browser: Browser) -> None:
    text = await browser.wait_for(
        "const m = document.querySelector('main'); "
        "return m && m.innerText.includes('quickstart@') && m.innerText"
    )
    assert "dial_refused" in text  # the refusal, by kind and in the log
    assert "server certificate" in text
    await browser.wait_for(
        "return !document.querySelector('#rate-in').textContent.startsWith('0 B')"
    )
