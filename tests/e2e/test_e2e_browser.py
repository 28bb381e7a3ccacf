"""A real browser through the tunnel: headless Chromium loads a page from a loopback origin
via the agent, and the page's WebSocket to a loopback echo server answers through it too.

Chromium is told to use the agent for loopback as well (``<-loopback>``; by default it
never proxies loopback) and to dump the DOM once its virtual time budget is spent.
Virtual time does not wait for a WebSocket, but nothing is dumped before the document
has loaded: so the page server sends the document up to its script, and its last bytes
only once the page has written the echo into the DOM and said so with ``GET /done``.
Chromium also tries to reach Google hosts in the background through the proxy: this
server admits only the two test ports, so those are refused before any name is resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from fluidity.agent import Agent
from fluidity.config.server import TargetsConfig
from fluidity.config.values import Address
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from support.harness import LOOPBACK, Tunnel, make_agent_config, make_server_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

MESSAGE = "echo through the fluidity tunnel"
PAGE = """<!doctype html>
<html><head><title>fluidity browser test</title></head><body>
<div id="out">waiting for the websocket</div>
<script>
const out = document.getElementById("out");
const ws = new WebSocket("ws://127.0.0.1:%(ws_port)d/echo");
ws.onopen = () => ws.send("%(message)s");
ws.onmessage = (event) => {
  out.textContent = "got: " + event.data;
  ws.close();
  fetch("/done");
};
ws.onerror = () => { out.textContent = "websocket error"; fetch("/done"); };
</script>
"""
PAGE_END = "</body></html>\n"


@dataclass
class Origins:
    """A page server and a WebSocket echo server on loopback, recording what reached them."""

    page_port: int = 0
    ws_port: int = 0
    page_requests: list[bytes] = field(default_factory=list)
    echoed: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve_page(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"\r\n\r\n")
                self.page_requests.append(head.split(b"\r\n")[0])
                if head.startswith(b"GET / "):
                    await self._send_page(writer)
                elif head.startswith(b"GET /done "):
                    self.done.set()
                    writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                else:  # favicon.ico and the like
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _send_page(self, writer: asyncio.StreamWriter) -> None:
        """The document up to its script now, its end once the page said /done (the
        body ends with the connection: the agent carries close-delimited bodies)."""
        page = PAGE % {"ws_port": self.ws_port, "message": MESSAGE}
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n")
        writer.write(b"Connection: close\r\n\r\n" + page.encode())
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                await self.done.wait()
        writer.write(PAGE_END.encode())

    async def echo(self, ws: ServerConnection) -> None:
        async for message in ws:
            self.echoed.append(str(message))
            await ws.send(message)


@pytest.fixture
async def origins() -> AsyncIterator[Origins]:
    found = Origins()
    page = await asyncio.start_server(found.serve_page, LOOPBACK, 0)
    found.page_port = page.sockets[0].getsockname()[1]
    async with serve(found.echo, LOOPBACK, 0) as ws_server:
        found.ws_port = next(iter(ws_server.sockets)).getsockname()[1]
        try:
            yield found
        finally:
            page.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await page.wait_closed()


@pytest.fixture
async def browser_tunnel(pki: QuickstartPKI, origins: Origins) -> AsyncIterator[Tunnel]:
    """Server admitting only loopback on the two origin ports; agent and server with metrics."""
    targets = TargetsConfig(allow=("127.0.0.0/8",), ports=(origins.page_port, origins.ws_port))
    server = Server(make_server_config(pki, targets=targets, metrics=Address(LOOPBACK, 0)))
    await server.start()
    assert server.address is not None
    agent = Agent(make_agent_config(pki, server.address[1], metrics=Address(LOOPBACK, 0)))
    await agent.start()
    tunnel = Tunnel(server, agent)
    try:
        await tunnel.ready()
        yield tunnel
    finally:
        await tunnel.close()


async def chromium_dump_dom(url: str, proxy_port: int, profile: Path) -> tuple[str, str]:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-features=NetworkTimeServiceQuerying,OptimizationHints",
        f"--user-data-dir={profile}",
        f"--proxy-server=http://{LOOPBACK}:{proxy_port}",
        "--proxy-bypass-list=<-loopback>",
        "--virtual-time-budget=8000",
        "--dump-dom",
        url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace"), err.decode(errors="replace")


async def test_chromium_loads_a_page_whose_websocket_answers_through_the_tunnel(
    browser_tunnel: Tunnel, origins: Origins, tmp_path: Path
) -> None:
    url = f"http://{LOOPBACK}:{origins.page_port}/"
    dom, err = await chromium_dump_dom(url, browser_tunnel.proxy_port, tmp_path / "profile")

    assert f'<div id="out">got: {MESSAGE}</div>' in dom, f"DOM:\n{dom}\nchromium said:\n{err}"
    assert origins.echoed == [MESSAGE]
    # The page came through the agent (it rewrote Chromium's absolute-form request),
    # and the page said it had written the echo before the DOM was dumped.
    assert origins.page_requests[0] == b"GET / HTTP/1.1"
    assert b"GET /done HTTP/1.1" in origins.page_requests
    # Both the page and the WebSocket rode tunnel streams, as each side counted them.
    agent, server = browser_tunnel.agent.metrics, browser_tunnel.server.metrics
    opened = "fluidity_streams_opened_total"
    by_kind = {k: agent.value(opened, {"kind": k}) for k in ("connect", "forward")}
    assert by_kind["forward"] >= 1, by_kind  # the page (plain HTTP through the proxy)
    assert sum(by_kind.values()) >= 2, by_kind  # and the WebSocket
    assert server.value(opened, {"kind": "connect"}) == sum(by_kind.values())
