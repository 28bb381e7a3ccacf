"""Pure decisions for a service under ECS Service Auto Scaling.

With the load balancer, the stack registers the service with Application Auto
Scaling: a *scalable target* whose minimum and maximum bound the desired count,
and target-tracking policies that move the desired count within them. The
lifecycle and the scaler must never fight, so the lifecycle owns the bounds and
the scaler owns the count in between::

    asleep   minimum 0, maximum 0, desired 0: the scaler can do nothing at all
    awake    minimum MinTasks, maximum MaxTasks, desired >= MinTasks: the scaler
             moves the count between the two; wake never lowers what it chose

``wake`` raises the bounds to the configured ones (and the desired count to at
least the minimum); ``sleep`` (when idle) and ``kill`` set the bounds to
:data:`ASLEEP` *before* the desired count to 0, so no scaling activity can
start a task in between, and a policy whose alarm fires later finds a maximum
of 0. Nothing here does I/O: each function takes what it needs and returns the
:class:`Change` to make; :mod:`fluidity.lifecycle.operations` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fluidity.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """The scalable target's bounds on the desired count."""

    min_tasks: int
    max_tasks: int

    def __post_init__(self) -> None:
        if self.min_tasks < 0 or self.max_tasks < self.min_tasks:
            raise ConfigError(
                f"scaling limits min {self.min_tasks}, max {self.max_tasks}: need "
                "0 <= MinTasks <= MaxTasks; fix the MinTasks and MaxTasks stack parameters"
            )

    @property
    def asleep(self) -> bool:
        return self.max_tasks == 0


ASLEEP = Limits(0, 0)
"""The bounds of a sleeping service: the scaler may not start a single task."""


@dataclass(frozen=True)
class Change:
    """What to set, in this order: the bounds first, then the desired count.

    ``None`` leaves a value as it is, so an operation that finds everything in
    place makes no call at all (each operation is idempotent).
    """

    limits: Limits | None = None
    desired_count: int | None = None

    @property
    def nothing(self) -> bool:
        return self.limits is None and self.desired_count is None


def wake_change(desired_count: int, current: Limits | None, configured: Limits | None) -> Change:
    """Wake: the configured bounds and at least their minimum of tasks.

    ``current`` is the scalable target as registered (``None``: there is none);
    ``configured`` the stack's MinTasks and MaxTasks (``None``: no scaler, the
    plain service of one task). A count the scaler (or an operator) raised is
    never lowered.
    """
    if configured is None:
        return Change(desired_count=None if desired_count >= 1 else 1)
    floor = max(configured.min_tasks, 1)
    wanted = max(desired_count, floor)
    return Change(
        limits=None if current == configured else configured,
        desired_count=None if wanted == desired_count else wanted,
    )


def stop_change(desired_count: int, current: Limits | None) -> Change:
    """Sleep or kill: bounds to :data:`ASLEEP` (if there is a scalable target), count to 0."""
    return Change(
        limits=None if current is None or current == ASLEEP else ASLEEP,
        desired_count=None if desired_count == 0 else 0,
    )


def limits_from_env(min_raw: str | None, max_raw: str | None) -> Limits | None:
    """``FLUIDITY_MIN_TASKS`` and ``FLUIDITY_MAX_TASKS``: both empty means no scaler.

    Raises :class:`ConfigError` naming the variable when one is missing or not a
    whole number, or when the minimum is below 1 (a woken service runs a task).
    """
    if not min_raw and not max_raw:
        return None
    values: list[int] = []
    for name, raw in (("FLUIDITY_MIN_TASKS", min_raw), ("FLUIDITY_MAX_TASKS", max_raw)):
        try:
            values.append(int(raw or ""))
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r}: must be a whole number of tasks; set both "
                "FLUIDITY_MIN_TASKS and FLUIDITY_MAX_TASKS, or neither (no auto scaling)"
            ) from None
    low, high = values
    if low < 1:
        raise ConfigError(f"FLUIDITY_MIN_TASKS={low}: a woken service runs at least 1 task")
    return Limits(low, high)
