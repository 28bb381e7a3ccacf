"""The server's activity publisher: CloudWatch metrics the ``sleep`` function reads.

Every ``interval`` seconds the server publishes, in namespace ``Fluidity`` with the
dimension ``ServiceName=<service>``::

    ActiveConnections         Count    agents connected now
    ActiveStreams             Count    proxied streams open now
    LastActivityEpochSeconds  None     when a stream last opened, carried bytes or closed

``LastActivityEpochSeconds`` is a timestamp, not a rate: the control plane takes its
maximum over a window, which is the newest activity of any task of the service.

``put_metric_data`` is a blocking HTTPS call, so it runs in a worker thread
(:func:`asyncio.to_thread`); the event loop never waits on CloudWatch. A failed
publish is logged and the loop goes on: metrics are best effort, the tunnel is not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fluidity.errors import ConfigError, FluidityError, LifecycleError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloudWatchConfig:
    """The ``cloudwatch:`` section of ``server.yaml``; absent means no publishing.

    ``service`` is the ECS service name (the ``ServiceName`` dimension the control
    plane filters on); ``region`` defaults to the standard AWS region chain.
    """

    service: str
    namespace: str = "Fluidity"
    interval: float = 60.0
    region: str | None = None

    def __post_init__(self) -> None:
        if not self.service:
            raise ConfigError("service: must name the ECS service (the stack's ServiceName)")
        if not self.interval > 0:
            raise ConfigError(f"interval: {self.interval} must be > 0 seconds")


@dataclass(frozen=True)
class Activity:
    """A snapshot of the server's activity; ``last_activity`` is epoch seconds."""

    active_connections: int
    active_streams: int
    last_activity: float


class ActivityLike(Protocol):
    """Anything with :class:`Activity`'s three read-only fields (e.g. the server's own)."""

    @property
    def active_connections(self) -> int: ...
    @property
    def active_streams(self) -> int: ...
    @property
    def last_activity(self) -> float: ...


class MetricSink(Protocol):
    """Where metric data goes: ``PutMetricData`` in production, a list in a test."""

    def put(self, namespace: str, data: Sequence[Mapping[str, Any]]) -> None: ...


def metric_data(service: str, activity: ActivityLike) -> list[dict[str, Any]]:
    """The three CloudWatch metric datums for one snapshot (pure)."""
    dimensions = [{"Name": "ServiceName", "Value": service}]
    return [
        {
            "MetricName": "ActiveConnections",
            "Dimensions": dimensions,
            "Value": float(activity.active_connections),
            "Unit": "Count",
        },
        {
            "MetricName": "ActiveStreams",
            "Dimensions": dimensions,
            "Value": float(activity.active_streams),
            "Unit": "Count",
        },
        {
            "MetricName": "LastActivityEpochSeconds",
            "Dimensions": dimensions,
            "Value": float(activity.last_activity),
            "Unit": "None",
        },
    ]


class MetricsPublisher:
    """Publishes :class:`Activity` snapshots every ``config.interval`` seconds until cancelled.

    ``sink`` defaults to CloudWatch (boto3, imported lazily when ``run`` starts).
    """

    def __init__(self, config: CloudWatchConfig, sink: MetricSink | None = None) -> None:
        self.config = config
        self._sink = sink
        self.published = 0
        self.failed = 0

    async def run(self, activity: Callable[[], ActivityLike]) -> None:
        """Publish now, then every interval; returns only by cancellation.

        Raises :class:`ConfigError` at once if the default sink cannot be made
        (boto3 missing, no region): a configuration error is not retried.

        Cancelling while a publish is in flight returns at once; the worker thread
        finishes its one HTTPS call on its own and its result is dropped.
        """
        sink = self._sink
        if sink is None:
            sink = await asyncio.to_thread(self._default_sink)
        while True:
            await self.publish(sink, activity())
            await asyncio.sleep(self.config.interval)

    async def publish(self, sink: MetricSink, snapshot: ActivityLike) -> bool:
        """Send one snapshot; log and count a failure instead of raising it."""
        data = metric_data(self.config.service, snapshot)
        try:
            await asyncio.to_thread(sink.put, self.config.namespace, data)
        except (FluidityError, OSError) as exc:
            self.failed += 1
            log.warning("cloudwatch: publishing activity failed (will retry): %s", exc)
            return False
        self.published += 1
        return True

    def _default_sink(self) -> MetricSink:
        """CloudWatch via boto3; a missing boto3 or region is a configuration error."""
        try:
            from fluidity.lifecycle import aws
        except ImportError as exc:
            raise ConfigError(
                "cloudwatch: is set but boto3 is not installed; install 'fluidity[aws]' "
                "or remove the cloudwatch section from server.yaml"
            ) from exc
        try:
            return aws.CloudWatchSink(region=self.config.region)
        except LifecycleError as exc:
            raise ConfigError(f"cloudwatch: {exc}") from exc
