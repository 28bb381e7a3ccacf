"""The server's way to targets over loopback: connect timeout, retries, circuit breaker.

``Dialer`` is driven directly against real loopback listeners; the circuit
breaker is then shown end to end through agent and server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fluidity.config.server import CircuitBreakerConfig, DialConfig
from fluidity.errors import DialRefused, DialTimeout
from fluidity.pki.certs import QuickstartPKI
from fluidity.protocol.policy import TargetPolicy
from fluidity.protocol.retry import CircuitBreaker, CircuitState
from fluidity.server.dialer import Dialer, DialSettings
from support.harness import LOOPBACK, start_tunnel
from support.origins import RecordingOrigin
from support.transfers import http_request, wait_for

ALLOW_LOOPBACK = TargetPolicy.from_config(("127.0.0.0/8",), (), ())


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@contextmanager
def full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full: further SYNs are dropped, connects hang."""
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = socket.create_connection((LOOPBACK, port), timeout=5)
    try:
        yield port
    finally:
        queued.close()
        listener.close()


class Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def dialer(**settings: float) -> Dialer:
    return Dialer(ALLOW_LOOPBACK, DialSettings(**settings), CircuitBreaker(failures=5))  # type: ignore[arg-type]


async def test_a_connect_that_hangs_is_a_504_dial_timeout_after_connect_timeout() -> None:
    expected = r"timed out after 0.2 s \(after 1 attempt\)"
    with full_backlog() as port, pytest.raises(DialTimeout, match=expected):
        await dialer(connect_timeout=0.2, attempts=1).dial(f"{LOOPBACK}:{port}", Sink)
    assert DialTimeout.status == 504


async def test_every_attempt_refused_is_a_502_naming_the_attempts_and_one_breaker_failure() -> None:
    dial = dialer(attempts=3, backoff_initial=0.01, backoff_max=0.02)
    port = unused_port()
    with pytest.raises(DialRefused, match=r"refused.*after 3 attempts"):
        await dial.dial(f"{LOOPBACK}:{port}", Sink)
    assert dial.breaker._circuits[f"{LOOPBACK}:{port}"].failures == 1


async def test_a_target_that_comes_up_between_attempts_is_reached_by_the_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first attempt is refused; the listener appears during the backoff (1 s before
    the second attempt); the second attempt connects and the breaker stays closed."""
    caplog.set_level(logging.DEBUG, logger="fluidity.server.dialer")
    port = unused_port()
    dial = dialer(attempts=3, backoff_initial=1.0, backoff_max=1.0)
    attempt = asyncio.create_task(dial.dial(f"{LOOPBACK}:{port}", Sink))
    await wait_for(lambda: "failed: connection refused" in caplog.text, within=5)
    listener = await asyncio.start_server(lambda r, w: w.close(), LOOPBACK, port)
    try:
        transport, _ = await asyncio.wait_for(attempt, 10)
        transport.close()
        assert dial.breaker.state(f"{LOOPBACK}:{port}", now=0) is CircuitState.CLOSED
        assert caplog.text.count("failed: connection refused") == 1
    finally:
        listener.close()
        await listener.wait_closed()


async def test_the_circuit_opens_fails_fast_half_opens_and_recovers_end_to_end(
    pki: QuickstartPKI,
) -> None:
    """circuit_breaker failures 3, reset_after 0.5 s, dial attempts 1: three refused
    dials open the circuit; while open the answer is 503 "circuit open for host:port"
    and nothing is dialled, even once the target is back; after 0.5 s one probe goes
    through, succeeds, and the circuit is closed again."""
    port = unused_port()
    key = f"{LOOPBACK}:{port}"
    url = f"http://{key}/x"
    server_changes: dict[str, object] = {
        "dial": DialConfig(attempts=1),
        "circuit_breaker": CircuitBreakerConfig(failures=3, reset_after=0.5),
    }
    tunnel = await start_tunnel(pki, server_changes=server_changes)
    target = RecordingOrigin()
    try:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            # Taken before the request: the circuit opens during the third one, so
            # this is no later than that moment, however long the answer takes.
            opened = loop.time()
            outcome = await http_request(tunnel.proxy_port, url)
            assert outcome.status == 502 and "refused" in outcome.error, outcome
        breaker = tunnel.server.streams.dialer.breaker
        await target.start(port)  # the target is back, but the circuit is open
        fast = await http_request(tunnel.proxy_port, url)
        assert fast.status == 503 and f"circuit open for {key}" in fast.error, fast
        assert target.heads == []  # failing fast: not dialled

        # Half-open after reset_after: the next request is the probe.
        await wait_for(lambda: breaker.state(key, loop.time()) is not CircuitState.OPEN, 5)
        assert loop.time() - opened >= 0.5
        probe = await http_request(tunnel.proxy_port, url)
        assert probe.status == 200, probe
        assert breaker.state(key, loop.time()) is CircuitState.CLOSED
        assert (await http_request(tunnel.proxy_port, url)).status == 200
        assert len(target.heads) == 2
    finally:
        await target.close()
        await tunnel.close()


async def test_a_dial_cancelled_mid_way_leaves_no_verdict_on_the_circuit() -> None:
    """The agent gives up while the server dials: the half-open probe is freed, not
    counted as a success that would close an open circuit."""
    breaker = CircuitBreaker(failures=1, reset_after=0.01)
    dial = Dialer(ALLOW_LOOPBACK, DialSettings(connect_timeout=5, attempts=1), breaker)
    with full_backlog() as port:
        key = f"{LOOPBACK}:{port}"
        breaker.record_failure(key, now=0)
        loop = asyncio.get_running_loop()
        await wait_for(lambda: breaker.state(key, loop.time()) is CircuitState.HALF_OPEN, 5)
        probe = asyncio.create_task(dial.dial(key, Sink))
        await wait_for(lambda: breaker._circuits[key].probing, within=5)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert breaker.state(key, loop.time()) is CircuitState.HALF_OPEN
        assert breaker.allow(key, loop.time())  # a new probe may go
