"""AWS Lambda entry points: ``fluidity.lifecycle.handlers.{wake,query,sleep,kill}``.

Configured by the environment (set by the CloudFormation template)::

    FLUIDITY_CLUSTER         ECS cluster name or ARN                      (required)
    FLUIDITY_SERVICE         ECS service name                             (required)
    FLUIDITY_IDLE_MINUTES    minutes without activity before sleep scales to 0 (default 15)
    FLUIDITY_PUBLIC_ADDRESS  optional fixed address (the NLB's DNS name) answered when ready
    FLUIDITY_MIN_TASKS       with FLUIDITY_MAX_TASKS: the service has a scalable target
    FLUIDITY_MAX_TASKS       (ECS Service Auto Scaling); wake opens its bounds to these,
                             sleep and kill close them to 0..0. Both empty: no scaler.

Every handler answers in the function-URL response shape::

    {"statusCode": 200, "headers": {"content-type": "application/json"},
     "body": "{\\"status\\": \\"ready\\", \\"address\\": \\"203.0.113.7\\", \\"tasks\\": 1}"}

and on a failure it knows about (a :class:`~fluidity.errors.FluidityError`: bad
configuration, an AWS call refused) ``statusCode`` 500 with ``{"error": "..."}``.
Anything else is a bug and is left to raise, so Lambda logs its traceback.

The handlers are thin: they read the settings, build the boto3 gateways (importing
:mod:`fluidity.lifecycle.aws` lazily), and call :mod:`fluidity.lifecycle.operations`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fluidity.errors import ConfigError, FluidityError
from fluidity.lifecycle import operations
from fluidity.lifecycle.scaling import Limits, limits_from_env

log = logging.getLogger(__name__)

Response = dict[str, Any]


@dataclass(frozen=True)
class HandlerSettings:
    """What the four functions need to know, read once per invocation from the environment."""

    cluster: str
    service: str
    idle_minutes: float = 15.0
    public_address: str | None = None
    scaling: Limits | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HandlerSettings:
        """Read and validate the ``FLUIDITY_*`` variables; raise :class:`ConfigError`."""
        missing = [k for k in ("FLUIDITY_CLUSTER", "FLUIDITY_SERVICE") if not env.get(k)]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} not set: the function's environment must name the "
                "ECS cluster and service (the CloudFormation template sets both)"
            )
        raw_idle = env.get("FLUIDITY_IDLE_MINUTES", "15")
        try:
            idle = float(raw_idle)
        except ValueError:
            idle = -1.0
        if not idle > 0:
            raise ConfigError(
                f"FLUIDITY_IDLE_MINUTES={raw_idle!r}: must be a positive number of minutes"
            )
        return cls(
            cluster=env["FLUIDITY_CLUSTER"],
            service=env["FLUIDITY_SERVICE"],
            idle_minutes=idle,
            public_address=env.get("FLUIDITY_PUBLIC_ADDRESS") or None,
            scaling=limits_from_env(env.get("FLUIDITY_MIN_TASKS"), env.get("FLUIDITY_MAX_TASKS")),
        )


def wake(event: Mapping[str, Any], context: object) -> Response:
    """Open the scaler's bounds (if any) and set the desired count to at least 1 (MinTasks
    with a scaler), never lowering it; answer the status."""
    return _answer(
        "wake",
        lambda s: operations.wake(_service(s), s.public_address, _scaling(s)).to_json(),
    )


def query(event: Mapping[str, Any], context: object) -> Response:
    """Answer ``stopped``, ``starting`` or ``ready`` with the address and the task count."""
    return _answer("query", lambda s: operations.query(_service(s), s.public_address).to_json())


def kill(event: Mapping[str, Any], context: object) -> Response:
    """Close the scaler's bounds (if any) to 0..0 and set the desired count to 0 now."""
    return _answer("kill", lambda s: operations.kill(_service(s), _scaling(s)).to_json())


def sleep(event: Mapping[str, Any], context: object) -> Response:
    """Scheduled: scale to 0 when the server reported no activity for the idle threshold."""
    return _answer("sleep", _sleep)


def _sleep(settings: HandlerSettings) -> dict[str, Any]:
    from fluidity.lifecycle import aws

    outcome = operations.sleep(
        _service(settings),
        aws.CloudWatchActivity(settings.service),
        now=time.time(),
        idle_seconds=settings.idle_minutes * 60,
        fixed_address=settings.public_address,
        scaling=_scaling(settings),
    )
    log.info("sleep: %s: %s", outcome.decision.action.value, outcome.decision.reason)
    return {
        **outcome.status.to_json(),
        "decision": outcome.decision.action.value,
        "reason": outcome.decision.reason,
    }


def _service(settings: HandlerSettings) -> operations.ServiceGateway:
    from fluidity.lifecycle import aws

    return aws.EcsService(settings.cluster, settings.service)


def _scaling(settings: HandlerSettings) -> operations.Scaling | None:
    if settings.scaling is None:
        return None
    from fluidity.lifecycle import aws

    target = aws.EcsScalableTarget(settings.cluster, settings.service)
    return operations.Scaling(target, settings.scaling)


def _answer(name: str, operation: Callable[[HandlerSettings], dict[str, Any]]) -> Response:
    """Run ``operation`` with the settings and wrap its body, or the error, as a response."""
    try:
        body = operation(HandlerSettings.from_env(os.environ))
    except FluidityError as exc:
        log.error("%s failed: %s", name, exc)
        return _response(500, {"error": str(exc)})
    log.info("%s: %s", name, body)
    return _response(200, body)


def _response(status_code: int, body: Mapping[str, Any]) -> Response:
    return {
        "statusCode": status_code,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }
