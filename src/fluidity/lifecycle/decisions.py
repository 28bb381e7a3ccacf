"""Pure decisions of the control plane: what state the server is in, and whether to sleep it.

Nothing here does I/O or reads a clock: every function takes the facts it needs
(the ECS service and task descriptions reduced to :class:`ServiceView`, the time
``now`` and the last activity the server reported) and returns a value. That
keeps the rules small enough to test as tables and lets the Lambda handlers stay
thin glue.

The status model the agent sees::

    stopped   desired count 0 (tasks may still be draining; none will take new work)
    starting  desired count >= 1, but no task is RUNNING with a public address yet
    ready     desired count >= 1 and a task is RUNNING, healthy or unchecked, with an address

Each status read from the service also carries ``tasks``, the number of tasks
serving (RUNNING, meant to run, not known unhealthy): behind the load balancer
the auto scaler moves it between MinTasks and MaxTasks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fluidity.errors import LifecycleError


class Status(enum.StrEnum):
    """The server's state as the agent needs it: can it connect, and where."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"


@dataclass(frozen=True)
class TaskView:
    """One ECS task of the service, reduced to what the decisions need.

    ``started_at`` is epoch seconds (``None`` until ECS reports the task started);
    ``public_ip`` is the address of its network interface, if it has one;
    ``health`` is ECS's ``healthStatus`` (``UNKNOWN`` when no health check is defined).
    """

    arn: str
    last_status: str
    desired_status: str = "RUNNING"
    started_at: float | None = None
    public_ip: str | None = None
    health: str = "UNKNOWN"

    @property
    def serving(self) -> bool:
        """True when the task runs, is meant to keep running, and is not known unhealthy."""
        return (
            self.last_status == "RUNNING"
            and self.desired_status == "RUNNING"
            and self.health != "UNHEALTHY"
        )


@dataclass(frozen=True)
class ServiceView:
    """The ECS service: its desired count and the tasks it currently has."""

    desired_count: int
    tasks: tuple[TaskView, ...] = ()


@dataclass(frozen=True)
class ServerStatus:
    """What ``query`` (and ``wake``/``kill``) answer: a status and, when ready, an address.

    ``tasks`` is the number of serving tasks when the answer was read from the
    service (``None`` when it was not, as after ``kill``).
    """

    status: Status
    address: str | None = None
    tasks: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON body of a function-URL answer; ``address`` and ``tasks`` when known."""
        body: dict[str, Any] = {"status": self.status.value}
        if self.address is not None:
            body["address"] = self.address
        if self.tasks is not None:
            body["tasks"] = self.tasks
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ServerStatus:
        """Parse a control-plane answer; raise :class:`LifecycleError` if it is not one."""
        try:
            status = Status(body["status"])
        except (KeyError, ValueError, TypeError) as exc:
            raise LifecycleError(
                f"the control plane answered {dict(body)!r}, which has no valid 'status'; "
                "check that the URL points at a Fluidity query/wake function"
            ) from exc
        address = body.get("address")
        if status is Status.READY and not isinstance(address, str):
            raise LifecycleError(
                f"the control plane said 'ready' without an address: {dict(body)!r}"
            )
        tasks = body.get("tasks")
        return cls(
            status,
            address if isinstance(address, str) else None,
            tasks if isinstance(tasks, int) and not isinstance(tasks, bool) else None,
        )


def server_status(service: ServiceView, fixed_address: str | None = None) -> ServerStatus:
    """Derive the agent-facing status from the service description.

    ``fixed_address`` (a load balancer's DNS name) replaces the task's own address:
    behind an NLB the agent connects to the balancer, not to a task.
    """
    serving = _by_start(t for t in service.tasks if t.serving)
    count = len(serving)
    if service.desired_count <= 0:
        return ServerStatus(Status.STOPPED, tasks=count)
    for task in serving:
        if fixed_address:
            return ServerStatus(Status.READY, fixed_address, count)
        if task.public_ip:
            return ServerStatus(Status.READY, task.public_ip, count)
    return ServerStatus(Status.STARTING, tasks=count)


def _by_start(tasks: Iterable[TaskView]) -> list[TaskView]:
    """Oldest first: the longest-running task is the most likely to be listening."""
    return sorted(tasks, key=lambda t: t.started_at if t.started_at is not None else float("inf"))


class SleepAction(enum.StrEnum):
    """What the scheduled ``sleep`` function does about the service."""

    SCALE_TO_ZERO = "scale-to-zero"
    KEEP_RUNNING = "keep-running"
    STILL_STARTING = "still-starting"
    ALREADY_STOPPED = "already-stopped"


@dataclass(frozen=True)
class SleepDecision:
    """A named verdict and the reason, in words an operator reads in the logs."""

    action: SleepAction
    reason: str

    @property
    def scales_down(self) -> bool:
        return self.action is SleepAction.SCALE_TO_ZERO


def decide_sleep(
    *,
    now: float,
    desired_count: int,
    task_starts: Iterable[float],
    last_activity: float | None,
    idle_seconds: float,
) -> SleepDecision:
    """Decide whether an idle server should be scaled to zero.

    ``task_starts`` are the start times (epoch seconds) of the RUNNING tasks,
    ``last_activity`` the newest ``LastActivityEpochSeconds`` the servers published
    (``None`` if none in the look-back window).

    The idle clock starts at the later of the last reported activity and the
    newest task's start: a freshly woken task has not published yet, and an old
    metric left over from a previous run must not put it back to sleep. So the
    server is kept while it is starting (no running task, or a task younger than
    the threshold that has not published) and is scaled down only once nothing
    has happened for ``idle_seconds``.
    """
    if desired_count <= 0:
        return SleepDecision(SleepAction.ALREADY_STOPPED, "desired count is already 0")
    starts = sorted(task_starts)
    if not starts:
        return SleepDecision(
            SleepAction.STILL_STARTING,
            f"desired count is {desired_count} but no task is running yet",
        )
    newest_start = starts[-1]
    if last_activity is None and now - newest_start < idle_seconds:
        return SleepDecision(
            SleepAction.STILL_STARTING,
            f"the newest task started {_minutes(now - newest_start)} ago "
            "and has not reported activity yet",
        )
    reference = max(newest_start, last_activity or newest_start)
    idle_for = now - reference
    if idle_for < idle_seconds:
        return SleepDecision(
            SleepAction.KEEP_RUNNING,
            f"last activity {_minutes(idle_for)} ago, under the {_minutes(idle_seconds)} limit",
        )
    what = "no activity reported" if last_activity is None else "last activity"
    return SleepDecision(
        SleepAction.SCALE_TO_ZERO,
        f"{what} {_minutes(idle_for)} ago, over the {_minutes(idle_seconds)} limit",
    )


def _minutes(seconds: float) -> str:
    """A short human duration: ``42 s`` under two minutes, else ``17 min``."""
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s"
    return f"{seconds / 60:.0f} min"
