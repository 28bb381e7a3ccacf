"""A headless Chromium driven through chromedriver's W3C WebDriver API, over httpx.

Just what the dashboard test needs (open a page, run a script, click, take a
screenshot, resize), with no Selenium: chromedriver is started on port 0 and
says which port it took; every call has a timeout, and ``wait_for`` polls a
script a bounded number of times.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
STARTED = re.compile(rb"started successfully on port (\d+)")


class WebDriverError(AssertionError):
    """chromedriver answered an error, or a wait ran out."""


@dataclass
class Browser:
    """One WebDriver session."""

    http: httpx.AsyncClient
    session: str

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"/session/{self.session}{path}"
        response = await self.http.request(method, url, json=body)
        answer = response.json()
        if response.status_code != 200:
            raise WebDriverError(f"{method} {path}: {answer.get('value')}")
        return answer.get("value")

    async def open(self, url: str) -> None:
        await self.call("POST", "/url", {"url": url})

    async def run(self, script: str, *args: Any) -> Any:
        """The value of ``script`` (a function body: ``return ...``) in the page."""
        return await self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    async def click(self, css: str) -> None:
        """A real click on the element ``css`` selects; found again if the page redrew it
        between the two calls (a stale reference), a few times at most."""
        for attempt in range(5):
            found = await self.call("POST", "/element", {"using": "css selector", "value": css})
            try:
                await self.call("POST", f"/element/{found[ELEMENT]}/click", {})
                return
            except WebDriverError as exc:
                if "stale" not in str(exc) or attempt == 4:
                    raise

    async def screenshot(self) -> bytes:
        """The viewport as PNG."""
        return base64.b64decode(await self.call("GET", "/screenshot"))

    async def resize(self, width: int, height: int) -> None:
        await self.call("POST", "/window/rect", {"width": width, "height": height})

    async def wait_for(self, script: str, *, within: float = 20.0, every: float = 0.25) -> Any:
        """Poll ``script`` until it returns something truthy; its last value if it never
        does (the assertion then says what the page showed)."""
        value: Any = None
        for _ in range(int(within / every)):
            value = await self.run(script)
            if value:
                return value
            await asyncio.sleep(every)  # the page polls its JSON: nothing to await here
        raise WebDriverError(f"waited {within:g} s for {script!r}; last value {value!r}")


@contextlib.asynccontextmanager
async def chromium(*, width: int = 1280, height: int = 900) -> AsyncIterator[Browser]:
    """A headless Chromium with no proxy, in a fresh profile, closed on exit."""
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    driver = await asyncio.create_subprocess_exec(
        CHROMEDRIVER,
        "--port=0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        port = await _driver_port(driver)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False
        ) as http:
            session = await _new_session(http, width, height)
            try:
                yield Browser(http, session)
            finally:
                with contextlib.suppress(httpx.HTTPError):
                    await http.delete(f"/session/{session}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            driver.kill()
        async with asyncio.timeout(10):
            await driver.wait()


async def _driver_port(driver: asyncio.subprocess.Process) -> int:
    assert driver.stdout is not None
    async with asyncio.timeout(20):
        for _ in range(50):
            line = await driver.stdout.readline()
            if not line:
                break
            if found := STARTED.search(line):
                return int(found.group(1))
    raise WebDriverError("chromedriver did not say which port it listens on")


async def _new_session(http: httpx.AsyncClient, width: int, height: int) -> str:
    args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
        f"--window-size={width},{height}",
    ]
    capabilities = {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
    }
    response = await http.post("/session", json={"capabilities": {"alwaysMatch": capabilities}})
    answer = response.json()["value"]
    if response.status_code != 200:
        raise WebDriverError(f"chromedriver could not start Chromium: {answer}")
    return str(answer["sessionId"])
