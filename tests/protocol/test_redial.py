"""When the keeper dials again: the backoff timer, waiting requests, wakes. No loop, no clock."""

from __future__ import annotations

import pytest

from fluidity.protocol.redial import RedialPlan, SleepDetector
from fluidity.protocol.retry import Backoff


def fixed_plan(initial: float = 0.5, maximum: float = 30.0) -> RedialPlan:
    return RedialPlan(Backoff(initial, maximum, jitter=False))


def fail_timed(plan: RedialPlan, now: float) -> float:
    """A timed attempt starts at ``now`` and fails at once: the delay it schedules."""
    plan.attempt_started(now, by_demand=False)
    delay = plan.attempt_ended(now)
    assert delay is not None
    return delay


def test_without_waiting_requests_attempts_follow_the_backoff_timer() -> None:
    plan = fixed_plan()
    assert plan.attempt_ended(0.0) == 0.5  # the first attempt (at start) failed
    now = 0.5
    delays = []
    for _ in range(7):
        at, by_demand = plan.next_attempt(now, waiting=False)
        assert not by_demand
        now = at
        delays.append(fail_timed(plan, now))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_waiting_request_starts_an_attempt_at_once_when_the_timer_is_far() -> None:
    plan = fixed_plan()
    plan.attempt_ended(0.0)
    for _ in range(6):
        fail_timed(plan, plan.timed_at)
    assert plan.timed_at == 61.5  # the last timed attempt was at 31.5 s
    assert plan.next_attempt(40.0, waiting=True) == (40.0, True)
    assert plan.next_attempt(40.0, waiting=False) == (61.5, False)


def test_attempts_for_waiting_requests_are_spaced_by_half_a_second() -> None:
    plan = fixed_plan(30.0, 30.0)
    plan.attempt_ended(0.0)  # timer at 30 s
    plan.attempt_started(1.0, by_demand=True)
    assert plan.attempt_ended(1.01) is None
    assert plan.next_attempt(1.01, waiting=True) == (1.5, True)
    assert plan.next_attempt(1.7, waiting=True) == (1.7, True)


def test_a_failed_attempt_for_waiting_requests_leaves_the_backoff_and_its_timer_alone() -> None:
    plan = fixed_plan()
    plan.attempt_ended(0.0)
    for _ in range(4):
        fail_timed(plan, plan.timed_at)
    attempts, timer = plan.backoff.attempts, plan.timed_at
    now = timer - 5.0
    for _ in range(8):
        at, by_demand = plan.next_attempt(now, waiting=True)
        assert by_demand
        plan.attempt_started(at, by_demand=True)
        assert plan.attempt_ended(at) is None
        now = at
    assert (plan.backoff.attempts, plan.timed_at) == (attempts, timer)
    # Once nobody waits, the timer is the next attempt, at its time.
    assert plan.next_attempt(now, waiting=False) == (timer, False)


def test_the_timer_is_never_later_than_demand_would_be() -> None:
    plan = fixed_plan(0.5, 0.5)
    plan.attempt_ended(0.0)  # timer at 0.5
    plan.attempt_started(0.4, by_demand=True)
    plan.attempt_ended(0.4)
    assert plan.next_attempt(0.45, waiting=True) == (0.5, False)


def test_a_demand_attempt_after_the_timer_was_due_schedules_the_next_timer() -> None:
    plan = fixed_plan()
    plan.attempt_ended(0.0)  # timer at 0.5
    plan.attempt_started(0.2, by_demand=True)
    assert plan.attempt_ended(0.9) == 1.0  # it outlived the timer: the backoff goes on
    assert plan.timed_at == pytest.approx(1.9)


def test_after_a_connection_that_worked_the_keeper_reset_starts_a_short_timer() -> None:
    plan = fixed_plan()
    plan.attempt_ended(0.0)
    for _ in range(6):
        fail_timed(plan, plan.timed_at)
    plan.attempt_started(40.0, by_demand=True)  # a request waited: it connected
    plan.backoff.reset()  # the keeper's doing after a good connection
    assert plan.attempt_ended(100.0) == 0.5  # the connection was lost later


def test_a_wake_between_attempts_makes_the_next_one_at_once_and_resets_the_backoff() -> None:
    plan = fixed_plan()
    plan.attempt_ended(0.0)
    for _ in range(6):
        fail_timed(plan, plan.timed_at)
    plan.woke(40.0)
    assert plan.next_attempt(40.0, waiting=False) == (40.0, False)
    assert fail_timed(plan, 40.0) == 0.5


def test_a_wake_during_an_attempt_makes_the_one_after_it_at_once() -> None:
    plan = fixed_plan()
    plan.attempt_ended(0.0)
    plan.attempt_started(0.5, by_demand=False)
    plan.woke(3.0)
    assert plan.attempt_ended(10.0) == 0.0
    assert plan.next_attempt(10.0, waiting=False) == (10.0, False)
    # Only that one: the next failure backs off again.
    assert fail_timed(plan, 10.0) == 0.5


def test_the_wall_clock_running_ahead_of_the_monotonic_one_is_a_sleep() -> None:
    detector = SleepDetector(tick=2.0)
    assert detector.observe(100.0, 1_000.0) is None
    assert detector.observe(102.0, 1_002.0) is None
    assert detector.observe(104.0, 1_064.0) == pytest.approx(60.0)
    assert detector.observe(106.0, 1_066.0) is None  # once


def test_a_tick_that_comes_late_is_a_sleep_where_the_monotonic_clock_counts_it() -> None:
    detector = SleepDetector(tick=2.0)
    detector.observe(100.0, 1_000.0)
    assert detector.observe(162.0, 1_062.0) == pytest.approx(60.0)


def test_small_delays_and_a_wall_clock_set_back_are_no_sleep() -> None:
    detector = SleepDetector(tick=2.0, threshold=5.0)
    detector.observe(100.0, 1_000.0)
    assert detector.observe(103.0, 1_004.0) is None  # a busy loop, NTP slewing
    assert detector.observe(105.0, 900.0) is None  # the clock set back an hour-ish
