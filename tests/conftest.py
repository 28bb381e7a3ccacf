"""Shared fixtures: real certificates, a real server and agent on loopback, real origins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fluidity.pki.certs import QuickstartPKI, ensure_quickstart_pki
from support.harness import Process, Tunnel, start_tunnel
from support.origins import RecordingOrigin

# The ``run`` fixture: a test's coroutine on asyncio's loop and on uvloop.
pytest_plugins = ("support.loops",)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", action="store_true", help="also run the long soak tests (marked soak)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="a long soak: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> QuickstartPKI:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    return ensure_quickstart_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def tunnel(pki: QuickstartPKI) -> AsyncIterator[Tunnel]:
    t = await start_tunnel(pki)
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
async def origin() -> AsyncIterator[RecordingOrigin]:
    o = await RecordingOrigin().start()
    try:
        yield o
    finally:
        await o.close()


@pytest.fixture
def processes(pki: QuickstartPKI, tmp_path: Path) -> Iterator[list[Process]]:
    """Started processes are killed at the end of the test, whatever happens."""
    started: list[Process] = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait(timeout=10)
