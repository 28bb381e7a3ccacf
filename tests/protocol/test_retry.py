"""Backoff and circuit-breaker rules, with the clock passed in."""

from __future__ import annotations

import random

from fluidity.protocol.retry import Backoff, CircuitBreaker, CircuitState


def test_backoff_doubles_to_the_maximum_without_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=False)
    delays = [backoff.next_delay() for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_full_jitter_stays_under_the_ceiling() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, rng=random.Random(7))
    for attempt in range(50):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert 0 <= backoff.next_delay() <= ceiling


def test_reset_starts_over() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=False)
    backoff.next_delay()
    backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_circuit_opens_after_consecutive_failures_and_fails_fast() -> None:
    breaker = CircuitBreaker(failures=5, reset_after=30.0)
    for _ in range(4):
        breaker.record_failure("dead:80", now=0.0)
    assert breaker.allow("dead:80", now=0.0)
    breaker.record_failure("dead:80", now=1.0)
    assert breaker.state("dead:80", now=1.0) is CircuitState.OPEN
    assert not breaker.allow("dead:80", now=30.9)
    assert breaker.allow("alive:80", now=1.0)


def test_half_open_admits_one_probe_and_success_closes() -> None:
    breaker = CircuitBreaker(failures=1, reset_after=30.0)
    breaker.record_failure("t:1", now=0.0)
    assert breaker.state("t:1", now=30.0) is CircuitState.HALF_OPEN
    assert breaker.allow("t:1", now=30.0)
    assert not breaker.allow("t:1", now=30.0)  # the probe is out
    breaker.record_success("t:1")
    assert breaker.state("t:1", now=30.0) is CircuitState.CLOSED


def test_a_failed_probe_opens_the_circuit_again() -> None:
    breaker = CircuitBreaker(failures=1, reset_after=30.0)
    breaker.record_failure("t:1", now=0.0)
    assert breaker.allow("t:1", now=31.0)
    breaker.record_failure("t:1", now=31.0)
    assert not breaker.allow("t:1", now=60.0)
    assert breaker.allow("t:1", now=61.0)
    assert breaker.states(now=61.0) == {"t:1": CircuitState.HALF_OPEN}


def test_a_cancelled_probe_frees_the_probe_and_leaves_the_circuit_open() -> None:
    breaker = CircuitBreaker(failures=2, reset_after=10.0)
    breaker.record_failure("t:1", now=0.0)
    breaker.record_failure("t:1", now=0.0)
    assert breaker.allow("t:1", now=10.0)  # the probe
    breaker.release("t:1")  # it was cancelled: no verdict
    assert breaker.state("t:1", now=10.0) is CircuitState.HALF_OPEN
    assert breaker.allow("t:1", now=10.0)  # another probe may go
    assert not breaker.allow("t:1", now=10.0)


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(failures=3, reset_after=10.0)
    for _ in range(2):
        breaker.record_failure("t:1", now=0.0)
    breaker.record_success("t:1")
    for _ in range(2):
        breaker.record_failure("t:1", now=0.0)
    assert breaker.state("t:1", now=0.0) is CircuitState.CLOSED
