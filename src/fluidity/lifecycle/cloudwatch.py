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
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TextIO

from fluidity.errors import ConfigError, FluidityError, LifecycleError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloudWatchConfig:
    """The ``cloudwatch:`` section of ``server.yaml``; absent means no publishing.

    ``service`` is the ECS service name (the ``ServiceName`` dimension the control
    plane filters on); ``region`` defaults to the standard AWS region chain.
    ``method`` ``emf`` (the default) writes CloudWatch Embedded Metric Format lines
    to standard output, which the awslogs driver of an ECS task turns into the
    same metrics with no AWS SDK and no credentials in the container; ``api``
    calls ``PutMetricData`` with boto3 (``fluidity[aws]``), for servers whose
    output does not go to CloudWatch Logs.
    """

    service: str
    namespace: str = "Fluidity"
    interval: float = 60.0
    region: str | None = None
    method: Literal["emf", "api"] = "emf"

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


class EmfSink:
    """Writes each snapshot as one CloudWatch Embedded Metric Format JSON line."""

    def __init__(
        self, stream: TextIO | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._stream = stream
        self._clock = clock

    def put(self, namespace: str, data: Sequence[Mapping[str, Any]]) -> None:
        stream = self._stream or sys.stdout
        stream.write(json.dumps(emf_document(namespace, data, self._clock())) + "\n")
        stream.flush()


def emf_document(namespace: str, data: Sequence[Mapping[str, Any]], now: float) -> dict[str, Any]:
    """The EMF form of ``metric_data`` (pure): one document, one value per metric."""
    dimensions = {d["Name"]: d["Value"] for datum in data for d in datum["Dimensions"]}
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(now * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [sorted(dimensions)],
                    "Metrics": [{"Name": d["MetricName"], "Unit": d["Unit"]} for d in data],
                }
            ],
        },
        **dimensions,
    }
    for datum in data:
        document[datum["MetricName"]] = datum["Value"]
    return document


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
        if sink is None and self.config.method == "emf":
            sink = EmfSink()
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
