"""The four control-plane operations over injected gateways: wake, query, sleep, kill.

The gateways are small :class:`typing.Protocol` interfaces; :mod:`fluidity.lifecycle.aws`
implements them with boto3, tests may implement them with anything. Each operation
reads the service once, decides with :mod:`fluidity.lifecycle.decisions`, and acts
at most once, so a retried invocation (Lambda retries, a user pressing twice) is
harmless: every operation is idempotent.

Behind the load balancer the service also has a scalable target (ECS Service
Auto Scaling); the operations then move its bounds with the desired count, as
:mod:`fluidity.lifecycle.scaling` decides, so the scaler and the lifecycle
never fight: wake opens the bounds to MinTasks..MaxTasks, sleep and kill close
them to 0..0 first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fluidity.lifecycle.decisions import (
    ServerStatus,
    ServiceView,
    SleepDecision,
    Status,
    decide_sleep,
    server_status,
)
from fluidity.lifecycle.scaling import Change, Limits, stop_change, wake_change


class ServiceGateway(Protocol):
    """The ECS service of one server: read its state, change its desired count."""

    def describe(self) -> ServiceView:
        """The desired count and the service's tasks that are meant to be running."""
        ...

    def set_desired_count(self, count: int) -> None:
        """Ask ECS to run ``count`` tasks."""
        ...


class ScalingGateway(Protocol):
    """The service's scalable target in Application Auto Scaling."""

    def limits(self) -> Limits | None:
        """The registered minimum and maximum, or ``None`` when there is no target."""
        ...

    def set_limits(self, limits: Limits) -> None:
        """Register (or update) the target with these bounds."""
        ...


@dataclass(frozen=True)
class Scaling:
    """A scaler to cooperate with: its gateway and the stack's MinTasks and MaxTasks."""

    gateway: ScalingGateway
    configured: Limits


class ActivityGateway(Protocol):
    """Where the servers' ``LastActivityEpochSeconds`` metric is read from."""

    def last_activity(self, *, now: float, lookback_seconds: float) -> float | None:
        """The newest reported activity (epoch seconds) within the look-back, or ``None``."""
        ...


@dataclass(frozen=True)
class SleepOutcome:
    """What ``sleep`` decided and the status after acting on it."""

    decision: SleepDecision
    status: ServerStatus


def query(service: ServiceGateway, fixed_address: str | None = None) -> ServerStatus:
    """The server's status and, when ready, its address."""
    return server_status(service.describe(), fixed_address)


def wake(
    service: ServiceGateway, fixed_address: str | None = None, scaling: Scaling | None = None
) -> ServerStatus:
    """Make sure at least one task (MinTasks with a scaler) is wanted, and the scaler's
    bounds are open; never lowers a scaled-out count.

    Returns the status seen *after* the change, usually ``starting``.
    """
    view = service.describe()
    current = scaling.gateway.limits() if scaling is not None else None
    change = wake_change(view.desired_count, current, scaling.configured if scaling else None)
    _apply(change, service, scaling)
    desired = view.desired_count if change.desired_count is None else change.desired_count
    return server_status(ServiceView(desired, view.tasks), fixed_address)


def kill(service: ServiceGateway, scaling: Scaling | None = None) -> ServerStatus:
    """Scale to zero now, whatever the activity; running tasks get SIGTERM and drain.

    With a scaler its bounds close to 0..0 first, so it cannot start a task again.
    """
    view = service.describe()
    current = scaling.gateway.limits() if scaling is not None else None
    _apply(stop_change(view.desired_count, current), service, scaling)
    return ServerStatus(Status.STOPPED)


def _apply(change: Change, service: ServiceGateway, scaling: Scaling | None) -> None:
    """Bounds first, then the count: the order that never lets the scaler step in."""
    if change.limits is not None and scaling is not None:
        scaling.gateway.set_limits(change.limits)
    if change.desired_count is not None:
        service.set_desired_count(change.desired_count)


def sleep(
    service: ServiceGateway,
    activity: ActivityGateway,
    *,
    now: float,
    idle_seconds: float,
    fixed_address: str | None = None,
    scaling: Scaling | None = None,
) -> SleepOutcome:
    """Scale to zero if the servers reported no activity for ``idle_seconds``.

    The metric is looked up over three idle periods (at least an hour) so that a
    server which stopped publishing long ago still reads as idle, not as unknown.
    """
    view = service.describe()
    starts = [t.started_at for t in view.tasks if t.serving and t.started_at is not None]
    last = None
    if view.desired_count > 0 and starts:
        last = activity.last_activity(now=now, lookback_seconds=max(3 * idle_seconds, 3600.0))
    decision = decide_sleep(
        now=now,
        desired_count=view.desired_count,
        task_starts=starts,
        last_activity=last,
        idle_seconds=idle_seconds,
    )
    if decision.scales_down:
        current = scaling.gateway.limits() if scaling is not None else None
        _apply(stop_change(view.desired_count, current), service, scaling)
        return SleepOutcome(decision, ServerStatus(Status.STOPPED))
    return SleepOutcome(decision, server_status(view, fixed_address))
