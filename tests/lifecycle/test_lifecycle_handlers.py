"""The Lambda handlers against moto's ECS, EC2 and CloudWatch state."""

from __future__ import annotations

import json
from typing import Any

import pytest
from lifecycle_world import CLUSTER, SERVICE, FargateWorld

from fluidity.lifecycle import handlers

MIN = 60.0


def body_of(response: dict[str, Any], status_code: int = 200) -> dict[str, Any]:
    assert response["statusCode"] == status_code, response
    assert response["headers"] == {"content-type": "application/json"}
    body = json.loads(response["body"])
    assert isinstance(body, dict)
    return body


def test_query_says_stopped_while_the_desired_count_is_zero(handler_env: FargateWorld) -> None:
    assert body_of(handlers.query({}, None)) == {"status": "stopped", "tasks": 0}


def test_wake_sets_the_desired_count_to_one_and_answers_starting(
    handler_env: FargateWorld,
) -> None:
    assert body_of(handlers.wake({}, None)) == {"status": "starting", "tasks": 0}
    assert handler_env.desired_count == 1
    assert body_of(handlers.query({}, None)) == {"status": "starting", "tasks": 0}


def test_wake_is_idempotent_and_never_lowers_a_scaled_out_count(
    handler_env: FargateWorld,
) -> None:
    handlers.wake({}, None)
    handlers.wake({}, None)
    assert handler_env.desired_count == 1
    handler_env.set_desired_count(3)
    handlers.wake({}, None)
    assert handler_env.desired_count == 3


def test_query_is_ready_with_the_public_ip_once_a_task_runs(handler_env: FargateWorld) -> None:
    handlers.wake({}, None)
    _, ip = handler_env.start_task()
    assert ip
    ready = {"status": "ready", "address": ip, "tasks": 1}
    assert body_of(handlers.query({}, None)) == ready
    assert body_of(handlers.wake({}, None)) == ready


def test_a_provisioning_task_or_one_without_a_public_ip_is_still_starting(
    handler_env: FargateWorld,
) -> None:
    handlers.wake({}, None)
    handler_env.start_task(status="PROVISIONING", started_ago=None, public=False)
    handler_env.start_task(public=False)
    assert body_of(handlers.query({}, None)) == {"status": "starting", "tasks": 1}


def test_tasks_outside_the_service_or_being_stopped_are_ignored(
    handler_env: FargateWorld,
) -> None:
    handlers.wake({}, None)
    handler_env.start_task(group="family:fluidity-server")
    arn, _ = handler_env.start_task()
    handler_env.ecs.stop_task(cluster=CLUSTER, task=arn, reason="test")
    assert body_of(handlers.query({}, None)) == {"status": "starting", "tasks": 0}


def test_a_fixed_public_address_is_answered_behind_a_load_balancer(
    handler_env: FargateWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    nlb = "fluidity-0123.elb.eu-west-1.amazonaws.com"
    monkeypatch.setenv("FLUIDITY_PUBLIC_ADDRESS", nlb)
    handlers.wake({}, None)
    handler_env.start_task(public=False)
    assert body_of(handlers.query({}, None)) == {"status": "ready", "address": nlb, "tasks": 1}


def test_kill_scales_to_zero_now_even_when_active(handler_env: FargateWorld) -> None:
    handlers.wake({}, None)
    handler_env.start_task()
    handler_env.report_activity(seconds_ago=5)
    assert body_of(handlers.kill({}, None)) == {"status": "stopped"}
    assert handler_env.desired_count == 0
    assert body_of(handlers.query({}, None))["status"] == "stopped"


def sleep_body(world: FargateWorld) -> dict[str, Any]:
    return body_of(handlers.sleep({"source": "aws.events"}, None))


def test_sleep_scales_an_idle_server_to_zero(handler_env: FargateWorld) -> None:
    handler_env.set_desired_count(1)
    handler_env.start_task(started_ago=90 * MIN)
    handler_env.report_activity(seconds_ago=20 * MIN)
    body = sleep_body(handler_env)
    assert body["decision"] == "scale-to-zero"
    assert body["status"] == "stopped"
    assert "over the 15 min limit" in body["reason"]
    assert handler_env.desired_count == 0


def test_sleep_keeps_an_active_server(handler_env: FargateWorld) -> None:
    handler_env.set_desired_count(1)
    _, ip = handler_env.start_task(started_ago=90 * MIN)
    handler_env.report_activity(seconds_ago=20 * MIN)
    handler_env.report_activity(seconds_ago=2 * MIN)
    body = sleep_body(handler_env)
    assert body == {
        "status": "ready",
        "address": ip,
        "tasks": 1,
        "decision": "keep-running",
        "reason": body["reason"],
    }
    assert handler_env.desired_count == 1


def test_sleep_waits_while_the_server_is_starting(handler_env: FargateWorld) -> None:
    handlers.wake({}, None)
    assert sleep_body(handler_env)["decision"] == "still-starting"
    handler_env.start_task(started_ago=3 * MIN)
    assert sleep_body(handler_env)["decision"] == "still-starting"
    assert handler_env.desired_count == 1


def test_sleep_stops_a_server_that_never_reported_activity(handler_env: FargateWorld) -> None:
    handler_env.set_desired_count(1)
    handler_env.start_task(started_ago=40 * MIN)
    body = sleep_body(handler_env)
    assert body["decision"] == "scale-to-zero"
    assert body["reason"].startswith("no activity reported")
    assert handler_env.desired_count == 0


def test_sleep_leaves_a_stopped_service_alone(handler_env: FargateWorld) -> None:
    assert sleep_body(handler_env)["decision"] == "already-stopped"
    assert handler_env.desired_count == 0


def test_an_unknown_service_is_a_500_naming_the_fix(
    handler_env: FargateWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUIDITY_SERVICE", "no-such-service")
    for handler in (handlers.wake, handlers.query, handlers.sleep, handlers.kill):
        error = body_of(handler({}, None), 500)["error"]
        assert "no-such-service" in error
        assert "FLUIDITY_SERVICE" in error


@pytest.mark.parametrize(
    ("name", "value", "mentions"),
    [
        ("FLUIDITY_CLUSTER", "", "FLUIDITY_CLUSTER"),
        ("FLUIDITY_SERVICE", "", "FLUIDITY_SERVICE"),
        ("FLUIDITY_IDLE_MINUTES", "soon", "FLUIDITY_IDLE_MINUTES='soon'"),
        ("FLUIDITY_IDLE_MINUTES", "0", "positive"),
    ],
)
def test_bad_environment_is_a_500_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    mentions: str,
) -> None:
    monkeypatch.setenv("FLUIDITY_CLUSTER", CLUSTER)
    monkeypatch.setenv("FLUIDITY_SERVICE", SERVICE)
    monkeypatch.setenv(name, value)
    assert mentions in body_of(handlers.query({}, None), 500)["error"]


def test_settings_default_to_fifteen_idle_minutes() -> None:
    settings = handlers.HandlerSettings.from_env(
        {"FLUIDITY_CLUSTER": CLUSTER, "FLUIDITY_SERVICE": SERVICE}
    )
    assert settings == handlers.HandlerSettings(CLUSTER, SERVICE, 15.0, None)
