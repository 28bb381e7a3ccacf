"""Reconnect on demand and after sleep: a waiting request does not wait for the backoff timer.

Server and agent in this event loop, real certificates, loopback only. The timer
is made long and deterministic (no jitter) so that only demand, or a wake, can
explain an attempt; one test runs the issue's scenario as it is, with the default
backoff and a 20 s outage in real time.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from fluidity.agent import Agent
from fluidity.config.agent import ReconnectConfig
from fluidity.config.values import Address
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from support.harness import LOOPBACK, make_agent_config, make_server_config
from support.origins import RecordingOrigin
from support.transfers import http_request, wait_for


def unused_port() -> int:
    """A loopback port nothing listens on (a server binds it later)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_of(agent: Agent) -> int:
    assert agent.address is not None
    return agent.address[1]


LONG = ReconnectConfig(initial=30.0, max=30.0)  # a timer nobody waits for


@asynccontextmanager
async def agent_with(
    pki: QuickstartPKI, server_port: int, *, jitter: bool = False, **changes: object
) -> AsyncIterator[Agent]:
    agent = Agent(make_agent_config(pki, server_port, **changes))
    agent.keeper.redial.plan.backoff.jitter = jitter
    await agent.start()
    try:
        yield agent
    finally:
        await agent.shutdown(drain_timeout=1.0)


@asynccontextmanager
async def server_on(pki: QuickstartPKI, port: int) -> AsyncIterator[Server]:
    server = Server(make_server_config(pki, listen=Address(LOOPBACK, port)))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(drain_timeout=1.0)


async def test_a_request_arriving_while_the_timer_is_30_s_away_connects_at_once(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    port = unused_port()
    async with agent_with(pki, port, reconnect=LONG, connect_wait=10.0) as agent:
        keeper = agent.keeper
        await wait_for(lambda: keeper.redial.plan.timed_at > 0, within=10)  # first attempt failed
        async with server_on(pki, port):
            outcome = await asyncio.wait_for(
                http_request(port_of(agent), f"{origin.url}/bytes/100"), 10
            )
            assert outcome.intact(100), outcome
            # Only demand could have connected it: the timer is still ahead.
            assert asyncio.get_running_loop().time() < keeper.redial.plan.timed_at
            assert keeper.reconnects == 1


async def test_many_waiting_requests_make_one_attempt_every_half_second_and_no_backoff(
    pki: QuickstartPKI,
) -> None:
    """Twenty requests wait 1 s for a server that stays down: at most one attempt in
    flight, at most one started per 0.5 s, and the backoff timer as it was."""
    async with agent_with(pki, unused_port(), reconnect=LONG, connect_wait=1.0) as agent:
        keeper = agent.keeper
        await wait_for(lambda: keeper.redial.plan.timed_at > 0, within=10)
        timer, backoff_attempts = keeper.redial.plan.timed_at, keeper._backoff.attempts
        loop = asyncio.get_running_loop()
        started, before = loop.time(), keeper.reconnects
        requests = [http_request(port_of(agent), "http://127.0.0.1:9/") for _ in range(20)]
        outcomes = await asyncio.wait_for(asyncio.gather(*requests), 10)
        elapsed = loop.time() - started
        assert all(o.status == 503 for o in outcomes), outcomes
        made = keeper.reconnects - before
        assert 1 <= made <= 1 + int(elapsed / 0.5), (made, elapsed)
        assert (keeper.redial.plan.timed_at, keeper._backoff.attempts) == (
            timer,
            backoff_attempts,
        )


async def test_a_jump_of_the_clocks_while_down_reconnects_at_once(pki: QuickstartPKI) -> None:
    """Nobody waits and the timer is 30 s away; the machine 'sleeps' (the wall clock
    jumps a minute ahead of the loop's): the next attempt is at once."""
    port = unused_port()
    skew = [0.0]
    agent = Agent(make_agent_config(pki, port, reconnect=LONG))
    agent.keeper.redial.plan.backoff.jitter = False
    agent.keeper.redial.tick = 0.05
    agent.keeper.redial.wall = lambda: time.time() + skew[0]
    await agent.start()
    try:
        keeper = agent.keeper
        await wait_for(lambda: keeper.redial.plan.timed_at > 0, within=10)
        async with server_on(pki, port):
            skew[0] = 60.0
            await keeper.wait_ready(within=5)  # would take 30 s on the timer
            assert asyncio.get_running_loop().time() < keeper.redial.plan.timed_at + 1
    finally:
        await agent.shutdown(drain_timeout=1.0)


async def test_a_jump_of_the_clocks_while_up_retires_the_connection_for_a_new_one(
    pki: QuickstartPKI, origin: RecordingOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    port = unused_port()
    skew = [0.0]
    async with server_on(pki, port):
        agent = Agent(make_agent_config(pki, port))
        agent.keeper.redial.tick = 0.05
        agent.keeper.redial.wall = lambda: time.time() + skew[0]
        await agent.start()
        try:
            before = await agent.keeper.wait_ready(within=10)
            skew[0] = 120.0
            await wait_for(lambda: agent.keeper.connection not in (None, before), within=10)
            assert "the machine slept 120 s" in caplog.text
            outcome = await asyncio.wait_for(
                http_request(port_of(agent), f"{origin.url}/bytes/10"), 10
            )
            assert outcome.intact(10), outcome
        finally:
            await agent.shutdown(drain_timeout=1.0)


@pytest.mark.slow  # the scenario: a 20 s outage, in real time
async def test_after_a_20_s_outage_a_request_sent_at_the_restart_succeeds_within_1_5_s(
    pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    """Default backoff (0.5 s doubling to 30 s, full jitter). After 20 s down the timer's
    next attempt is typically seconds away; the request must not wait for it."""
    loop = asyncio.get_running_loop()
    port = unused_port()
    async with agent_with(pki, port, jitter=True, reconnect=ReconnectConfig()) as agent:
        async with server_on(pki, port):
            await agent.keeper.wait_ready(within=10)
        down_since = loop.time()  # the server has shut down
        await wait_for(lambda: agent.keeper.connection is None, within=10)
        await asyncio.sleep(20 - (loop.time() - down_since))  # the outage itself, not a sync
        async with server_on(pki, port):
            restarted = loop.time()
            timer_ahead = agent.keeper.redial.plan.timed_at - restarted
            outcome = await asyncio.wait_for(
                http_request(port_of(agent), f"{origin.url}/bytes/100"), 10
            )
            took = loop.time() - restarted
        assert outcome.intact(100), outcome
        print(f"served {took:.3f} s after the restart; the timer was {timer_ahead:.1f} s away")
        assert took < 1.5, f"{took:.2f} s after the restart (timer {timer_ahead:.1f} s away)"
