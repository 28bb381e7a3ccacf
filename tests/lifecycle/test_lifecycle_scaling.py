"""The lifecycle and ECS Service Auto Scaling: wake opens the bounds, sleep and kill close them.

The rules as tables (no I/O), the order of the calls over recording gateways,
then the Lambda handlers against moto's Application Auto Scaling, ECS and
CloudWatch.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from lifecycle_world import CLUSTER, RESOURCE_ID, SERVICE, FargateWorld

from fluidity.errors import ConfigError
from fluidity.lifecycle import handlers, operations
from fluidity.lifecycle.decisions import ServiceView, Status
from fluidity.lifecycle.scaling import (
    ASLEEP,
    Change,
    Limits,
    limits_from_env,
    stop_change,
    wake_change,
)

MIN = 60.0
CONFIGURED = Limits(2, 4)


@pytest.mark.parametrize(
    ("desired", "current", "configured", "expected"),
    [
        # no scaler: the plain service of one task
        (0, None, None, Change(desired_count=1)),
        (1, None, None, Change()),
        (3, None, None, Change()),
        # asleep: open the bounds, then the minimum of tasks
        (0, ASLEEP, CONFIGURED, Change(CONFIGURED, 2)),
        # the stack's target is gone: registering it again creates it
        (0, None, CONFIGURED, Change(CONFIGURED, 2)),
        # awake already: nothing to do, and a scaled-out count is never lowered
        (2, CONFIGURED, CONFIGURED, Change()),
        (4, CONFIGURED, CONFIGURED, Change()),
        # bounds changed by hand (or a stack update) are put back
        (3, Limits(1, 3), CONFIGURED, Change(CONFIGURED)),
        (1, Limits(1, 3), CONFIGURED, Change(CONFIGURED, 2)),
    ],
    ids=[
        "no-scaler-asleep",
        "no-scaler-awake",
        "no-scaler-scaled-by-hand",
        "asleep",
        "no-target",
        "awake",
        "scaled-out",
        "other-bounds",
        "other-bounds-below-minimum",
    ],
)
def test_wake_opens_the_bounds_and_never_lowers_the_count(
    desired: int, current: Limits | None, configured: Limits | None, expected: Change
) -> None:
    assert wake_change(desired, current, configured) == expected


@pytest.mark.parametrize(
    ("desired", "current", "expected"),
    [
        (0, None, Change()),
        (2, None, Change(desired_count=0)),
        (3, CONFIGURED, Change(ASLEEP, 0)),
        (0, CONFIGURED, Change(ASLEEP)),  # the scaler could still raise it: close it
        (0, ASLEEP, Change()),
    ],
    ids=["no-scaler-stopped", "no-scaler-running", "awake", "count-0-bounds-open", "asleep"],
)
def test_sleep_and_kill_close_the_bounds_and_stop_every_task(
    desired: int, current: Limits | None, expected: Change
) -> None:
    assert stop_change(desired, current) == expected


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(None, None, None), ("", "", None), ("1", "4", Limits(1, 4)), ("2", "2", Limits(2, 2))],
)
def test_limits_come_from_both_variables_or_neither(
    low: str | None, high: str | None, expected: Limits | None
) -> None:
    assert limits_from_env(low, high) == expected


@pytest.mark.parametrize(
    ("low", "high", "mentions"),
    [
        ("1", "", "FLUIDITY_MAX_TASKS=''"),
        ("", "4", "FLUIDITY_MIN_TASKS=''"),
        ("one", "4", "FLUIDITY_MIN_TASKS='one'"),
        ("0", "4", "at least 1 task"),
        ("3", "2", "MinTasks <= MaxTasks"),
    ],
)
def test_bad_limits_name_the_variable_and_the_fix(low: str, high: str, mentions: str) -> None:
    with pytest.raises(ConfigError, match=mentions.replace("(", r"\(")):
        limits_from_env(low, high)


class RecordingService:
    """A service gateway that records the calls made to it, into a shared log."""

    def __init__(self, calls: list[str], desired: int) -> None:
        self.calls = calls
        self.desired = desired

    def describe(self) -> ServiceView:
        return ServiceView(self.desired)

    def set_desired_count(self, count: int) -> None:
        self.calls.append(f"desired {count}")
        self.desired = count


class RecordingTarget:
    def __init__(self, calls: list[str], limits: Limits | None) -> None:
        self.calls = calls
        self.current = limits

    def limits(self) -> Limits | None:
        return self.current

    def set_limits(self, limits: Limits) -> None:
        self.calls.append(f"limits {limits.min_tasks}..{limits.max_tasks}")
        self.current = limits


def test_the_bounds_move_before_the_count_both_ways() -> None:
    """Waking: bounds open, then the count; stopping: bounds close first, so no scaling
    activity can start a task between the two calls."""
    calls: list[str] = []
    service = RecordingService(calls, 0)
    scaling = operations.Scaling(RecordingTarget(calls, ASLEEP), CONFIGURED)
    assert operations.wake(service, "nlb", scaling).status is Status.STARTING
    assert operations.kill(service, scaling).status is Status.STOPPED
    assert calls == ["limits 2..4", "desired 2", "limits 0..0", "desired 0"]
    operations.kill(service, scaling)
    assert calls[4:] == []  # idempotent: nothing left to change


# -- the handlers against moto ------------------------------------------------------------


@pytest.fixture
def scaled(handler_env: FargateWorld, monkeypatch: pytest.MonkeyPatch) -> FargateWorld:
    """The load-balanced stack: MinTasks 2, MaxTasks 4, deployed asleep (bounds 0..0)."""
    monkeypatch.setenv("FLUIDITY_MIN_TASKS", "2")
    monkeypatch.setenv("FLUIDITY_MAX_TASKS", "4")
    monkeypatch.setenv("FLUIDITY_PUBLIC_ADDRESS", "fluidity-0123.elb.eu-west-1.amazonaws.com")
    handler_env.register_scalable_target(0, 0)
    return handler_env


def body_of(response: dict[str, Any], status_code: int = 200) -> dict[str, Any]:
    assert response["statusCode"] == status_code, response
    body = json.loads(response["body"])
    assert isinstance(body, dict)
    return body


def test_wake_raises_the_bounds_and_the_count_to_min_tasks(scaled: FargateWorld) -> None:
    assert body_of(handlers.wake({}, None)) == {"status": "starting", "tasks": 0}
    assert scaled.limits == (2, 4)
    assert scaled.desired_count == 2
    scaled.start_task(public=False)
    scaled.start_task(public=False)
    body = body_of(handlers.query({}, None))
    assert (body["status"], body["tasks"]) == ("ready", 2)


def test_wake_leaves_what_the_scaler_chose(scaled: FargateWorld) -> None:
    handlers.wake({}, None)
    scaled.set_desired_count(4)  # the CPU policy scaled out
    handlers.wake({}, None)
    assert (scaled.limits, scaled.desired_count) == ((2, 4), 4)


def test_kill_closes_the_bounds_so_the_scaler_cannot_revive_the_service(
    scaled: FargateWorld,
) -> None:
    handlers.wake({}, None)
    scaled.start_task()
    scaled.report_activity(seconds_ago=5)
    assert body_of(handlers.kill({}, None)) == {"status": "stopped"}
    assert (scaled.limits, scaled.desired_count) == ((0, 0), 0)
    handlers.wake({}, None)  # and wake opens them again
    assert (scaled.limits, scaled.desired_count) == ((2, 4), 2)


def test_sleep_closes_the_bounds_of_an_idle_service(scaled: FargateWorld) -> None:
    handlers.wake({}, None)
    scaled.start_task(started_ago=90 * MIN)
    scaled.start_task(started_ago=80 * MIN)
    scaled.report_activity(seconds_ago=20 * MIN)
    assert body_of(handlers.sleep({}, None))["decision"] == "scale-to-zero"
    assert (scaled.limits, scaled.desired_count) == ((0, 0), 0)


def test_sleep_leaves_an_active_scaled_out_service_alone(scaled: FargateWorld) -> None:
    handlers.wake({}, None)
    scaled.set_desired_count(3)
    for _ in range(3):
        scaled.start_task(started_ago=90 * MIN)
    scaled.report_activity(seconds_ago=1 * MIN)
    body = body_of(handlers.sleep({}, None))
    assert (body["decision"], body["tasks"]) == ("keep-running", 3)
    assert (scaled.limits, scaled.desired_count) == ((2, 4), 3)


def test_a_scaler_configured_without_a_target_gets_one_on_wake(
    handler_env: FargateWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUIDITY_MIN_TASKS", "1")
    monkeypatch.setenv("FLUIDITY_MAX_TASKS", "3")
    assert handler_env.limits is None
    handlers.kill({}, None)  # nothing registered: nothing to close
    assert handler_env.limits is None
    handlers.wake({}, None)
    assert (handler_env.limits, handler_env.desired_count) == ((1, 3), 1)


def test_without_the_variables_the_scaler_is_left_alone(handler_env: FargateWorld) -> None:
    handler_env.register_scalable_target(1, 5)
    handlers.kill({}, None)
    assert handler_env.limits == (1, 5)


def test_half_a_scaling_configuration_is_a_500_naming_the_variable(
    scaled: FargateWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUIDITY_MAX_TASKS", "")
    for handler in (handlers.wake, handlers.query, handlers.sleep, handlers.kill):
        assert "FLUIDITY_MAX_TASKS" in body_of(handler({}, None), 500)["error"]
    assert scaled.limits == (0, 0)


def test_the_resource_id_names_the_cluster_even_as_an_arn() -> None:
    pytest.importorskip("boto3")
    from fluidity.lifecycle.aws import EcsScalableTarget

    arn = f"arn:aws:ecs:eu-west-1:123456789012:cluster/{CLUSTER}"
    assert EcsScalableTarget(arn, SERVICE, region="eu-west-1").resource_id == RESOURCE_ID
