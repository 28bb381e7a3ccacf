"""Running a test on each event loop the program may get: asyncio's own, and uvloop.

The ``run`` fixture (tests/conftest.py loads this module as a plugin) runs the test's
coroutine on the loop of its parameter, bounded by ``WAIT`` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

WAIT = 10.0  # seconds: the bound on one test's coroutine


def loop_factories() -> list[Any]:
    """``None`` (asyncio's loop) and, where it is installed, uvloop's."""
    factories: list[Any] = [pytest.param(None, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        return factories
    return [*factories, pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.fixture(params=loop_factories())
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Run a test coroutine on the loop of this parameter, bounded by WAIT."""

    def runner(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=request.param) as r:
            r.run(asyncio.wait_for(coro, WAIT))

    return runner
