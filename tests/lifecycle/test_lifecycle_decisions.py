"""The pure control-plane decisions: the server's status and the sleep verdict, as tables."""

from __future__ import annotations

import pytest

from fluidity.errors import LifecycleError
from fluidity.lifecycle.decisions import (
    ServerStatus,
    ServiceView,
    SleepAction,
    Status,
    TaskView,
    decide_sleep,
    server_status,
)

MIN = 60.0
NOW = 1_800_000_000.0
IDLE = 15 * MIN


def running(ip: str | None = "203.0.113.7", *, started: float = NOW - 60, **kw: str) -> TaskView:
    return TaskView(
        arn=f"arn:task/{ip}", last_status="RUNNING", started_at=started, public_ip=ip, **kw
    )


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        (ServiceView(0), ServerStatus(Status.STOPPED, tasks=0)),
        (ServiceView(0, (running(),)), ServerStatus(Status.STOPPED, tasks=1)),
        (ServiceView(1), ServerStatus(Status.STARTING, tasks=0)),
        (
            ServiceView(1, (TaskView("arn:t", "PROVISIONING", public_ip=None),)),
            ServerStatus(Status.STARTING, tasks=0),
        ),
        (ServiceView(1, (TaskView("arn:t", "PENDING"),)), ServerStatus(Status.STARTING, tasks=0)),
        (ServiceView(1, (running(ip=None),)), ServerStatus(Status.STARTING, tasks=1)),
        (ServiceView(1, (running(health="UNHEALTHY"),)), ServerStatus(Status.STARTING, tasks=0)),
        (
            ServiceView(1, (running(desired_status="STOPPED"),)),
            ServerStatus(Status.STARTING, tasks=0),
        ),
        (ServiceView(1, (running(),)), ServerStatus(Status.READY, "203.0.113.7", 1)),
        (
            ServiceView(1, (running(health="HEALTHY"),)),
            ServerStatus(Status.READY, "203.0.113.7", 1),
        ),
        (
            ServiceView(
                2,
                (
                    running("198.51.100.2", started=NOW - 10),
                    running("198.51.100.1", started=NOW - 500),
                ),
            ),
            ServerStatus(Status.READY, "198.51.100.1", 2),
        ),
    ],
    ids=[
        "desired-0",
        "desired-0-task-draining",
        "desired-1-no-task",
        "provisioning",
        "pending",
        "running-without-address",
        "unhealthy",
        "being-stopped",
        "running-with-address",
        "healthy",
        "oldest-task-wins",
    ],
)
def test_status_follows_desired_count_and_tasks(
    service: ServiceView, expected: ServerStatus
) -> None:
    assert server_status(service) == expected


def test_a_load_balancer_address_replaces_the_task_address_once_a_task_serves() -> None:
    nlb = "fluidity-123.elb.eu-west-1.amazonaws.com"
    assert server_status(ServiceView(1, (running(),)), nlb) == ServerStatus(Status.READY, nlb, 1)
    assert server_status(ServiceView(1), nlb) == ServerStatus(Status.STARTING, tasks=0)


@pytest.mark.parametrize(
    ("desired", "starts", "last_activity", "expected"),
    [
        (0, [], None, SleepAction.ALREADY_STOPPED),
        (0, [NOW - 60 * MIN], NOW - 50 * MIN, SleepAction.ALREADY_STOPPED),
        (1, [], None, SleepAction.STILL_STARTING),
        (1, [], NOW - 60 * MIN, SleepAction.STILL_STARTING),
        (1, [NOW - 2 * MIN], None, SleepAction.STILL_STARTING),
        (1, [NOW - 14 * MIN], None, SleepAction.STILL_STARTING),
        (1, [NOW - 15 * MIN], None, SleepAction.SCALE_TO_ZERO),
        (1, [NOW - 90 * MIN], None, SleepAction.SCALE_TO_ZERO),
        (1, [NOW - 90 * MIN], NOW - 1 * MIN, SleepAction.KEEP_RUNNING),
        (1, [NOW - 90 * MIN], NOW - 14 * MIN, SleepAction.KEEP_RUNNING),
        (1, [NOW - 90 * MIN], NOW - 15 * MIN, SleepAction.SCALE_TO_ZERO),
        (1, [NOW - 90 * MIN], NOW - 80 * MIN, SleepAction.SCALE_TO_ZERO),
        # a fresh task after an old idle run: the stale metric must not sleep it
        (1, [NOW - 3 * MIN], NOW - 120 * MIN, SleepAction.KEEP_RUNNING),
        # scaled out: the newest task's start and any task's activity count
        (3, [NOW - 90 * MIN, NOW - 20 * MIN], NOW - 30 * MIN, SleepAction.SCALE_TO_ZERO),
        (3, [NOW - 90 * MIN, NOW - 5 * MIN], NOW - 30 * MIN, SleepAction.KEEP_RUNNING),
        (3, [NOW - 90 * MIN, NOW - 60 * MIN], NOW - 2 * MIN, SleepAction.KEEP_RUNNING),
    ],
    ids=[
        "stopped",
        "stopped-with-old-activity",
        "woken-no-task-yet",
        "woken-no-task-old-metric",
        "young-task-not-published",
        "task-just-under-threshold",
        "task-at-threshold-never-published",
        "old-task-never-published",
        "recently-active",
        "active-just-under-threshold",
        "idle-at-threshold",
        "long-idle",
        "fresh-task-stale-metric",
        "scaled-out-all-idle",
        "scaled-out-new-task",
        "scaled-out-one-active",
    ],
)
def test_sleep_decision(
    desired: int, starts: list[float], last_activity: float | None, expected: SleepAction
) -> None:
    decision = decide_sleep(
        now=NOW,
        desired_count=desired,
        task_starts=starts,
        last_activity=last_activity,
        idle_seconds=IDLE,
    )
    assert decision.action is expected
    assert decision.scales_down is (expected is SleepAction.SCALE_TO_ZERO)
    assert decision.reason


def test_sleep_reasons_name_the_durations() -> None:
    idle = decide_sleep(
        now=NOW,
        desired_count=1,
        task_starts=[NOW - 3600],
        last_activity=NOW - 1200,
        idle_seconds=IDLE,
    )
    assert idle.reason == "last activity 20 min ago, over the 15 min limit"
    young = decide_sleep(
        now=NOW, desired_count=1, task_starts=[NOW - 42], last_activity=None, idle_seconds=IDLE
    )
    assert young.reason == "the newest task started 42 s ago and has not reported activity yet"


def test_status_json_round_trips_and_omits_a_missing_address() -> None:
    assert ServerStatus(Status.STARTING).to_json() == {"status": "starting"}
    ready = ServerStatus(Status.READY, "203.0.113.7")
    assert ready.to_json() == {"status": "ready", "address": "203.0.113.7"}
    assert ServerStatus.from_json(ready.to_json()) == ready


@pytest.mark.parametrize(
    "body", [{}, {"status": "asleep"}, {"status": None}, {"status": "ready"}, {"error": "x"}]
)
def test_status_json_that_is_not_a_status_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(LifecycleError, match=r"status|address"):
        ServerStatus.from_json(body)
