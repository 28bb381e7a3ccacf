"""The server's CloudWatch activity publisher, against moto and a failing sink."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lifecycle_world import REGION, SERVICE, FargateWorld

from fluidity.errors import ConfigError, LifecycleError
from fluidity.lifecycle import aws
from fluidity.lifecycle.cloudwatch import Activity, CloudWatchConfig, MetricsPublisher

TIMEOUT = 5.0
NOW = time.time()
SNAPSHOT = Activity(active_connections=2, active_streams=7, last_activity=NOW - 30)


def statistic(world: FargateWorld, metric: str) -> float:
    end = datetime.now(UTC) + timedelta(minutes=1)
    found = world.cloudwatch.get_metric_statistics(
        Namespace="Fluidity",
        MetricName=metric,
        Dimensions=[{"Name": "ServiceName", "Value": SERVICE}],
        StartTime=end - timedelta(minutes=10),
        EndTime=end,
        Period=60,
        Statistics=["Maximum"],
    )
    return max(point["Maximum"] for point in found["Datapoints"])


async def test_publish_puts_the_three_metrics_in_the_fluidity_namespace(
    fargate: FargateWorld,
) -> None:
    publisher = MetricsPublisher(CloudWatchConfig(SERVICE))
    sink = aws.CloudWatchSink(cloudwatch=fargate.cloudwatch)
    assert await publisher.publish(sink, SNAPSHOT)
    listed = fargate.cloudwatch.list_metrics(Namespace="Fluidity")["Metrics"]
    assert sorted(m["MetricName"] for m in listed) == [
        "ActiveConnections",
        "ActiveStreams",
        "LastActivityEpochSeconds",
    ]
    assert all(m["Dimensions"] == [{"Name": "ServiceName", "Value": SERVICE}] for m in listed)
    assert statistic(fargate, "ActiveConnections") == 2
    assert statistic(fargate, "ActiveStreams") == 7
    assert statistic(fargate, "LastActivityEpochSeconds") == pytest.approx(NOW - 30)
    assert (publisher.published, publisher.failed) == (1, 0)


async def test_the_control_plane_reads_back_what_the_server_published(
    fargate: FargateWorld,
) -> None:
    publisher = MetricsPublisher(CloudWatchConfig(SERVICE))
    await publisher.publish(aws.CloudWatchSink(cloudwatch=fargate.cloudwatch), SNAPSHOT)
    activity = aws.CloudWatchActivity(SERVICE, cloudwatch=fargate.cloudwatch)
    assert activity.last_activity(now=time.time(), lookback_seconds=3600) == pytest.approx(NOW - 30)
    other = aws.CloudWatchActivity("another-service", cloudwatch=fargate.cloudwatch)
    assert other.last_activity(now=time.time(), lookback_seconds=3600) is None


async def test_run_publishes_every_interval_with_the_default_sink(fargate: FargateWorld) -> None:
    snapshots: asyncio.Queue[Activity] = asyncio.Queue()
    taken = itertools.count(1)

    def activity() -> Activity:
        snapshot = dataclasses.replace(SNAPSHOT, active_streams=next(taken))
        snapshots.put_nowait(snapshot)
        return snapshot

    publisher = MetricsPublisher(
        CloudWatchConfig(SERVICE, interval=0.001, region=REGION, method="api")
    )
    task = asyncio.create_task(publisher.run(activity))
    # the third snapshot is taken only after the first two were published
    for _ in range(3):
        await asyncio.wait_for(snapshots.get(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)
    assert publisher.published >= 2
    assert statistic(fargate, "ActiveStreams") >= 2


class FlakySink:
    """Fails its first ``failures`` calls as CloudWatch would, then records the data."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []
        self.lock = threading.Lock()

    def put(self, namespace: str, data: Sequence[Mapping[str, Any]]) -> None:
        with self.lock:
            self.calls.append((namespace, [dict(d) for d in data]))
            if len(self.calls) <= self.failures:
                raise LifecycleError("cloudwatch:PutMetricData failed: Throttling: Rate exceeded")


async def test_a_failed_publish_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = FlakySink(failures=2)
    taken: asyncio.Queue[None] = asyncio.Queue()

    def activity() -> Activity:
        taken.put_nowait(None)
        return SNAPSHOT

    publisher = MetricsPublisher(CloudWatchConfig(SERVICE, interval=0.001), sink)
    with caplog.at_level(logging.WARNING, logger="fluidity.lifecycle.cloudwatch"):
        task = asyncio.create_task(publisher.run(activity))
        for _ in range(4):
            await asyncio.wait_for(taken.get(), TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)
    assert publisher.failed == 2
    assert publisher.published >= 1
    assert "Rate exceeded" in caplog.text
    namespace, data = sink.calls[-1]
    assert namespace == "Fluidity"
    assert [d["MetricName"] for d in data] == [
        "ActiveConnections",
        "ActiveStreams",
        "LastActivityEpochSeconds",
    ]


class BlockingSink:
    """Blocks in ``put`` until released, like a CloudWatch call that hangs."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def put(self, namespace: str, data: Sequence[Mapping[str, Any]]) -> None:
        self.entered.set()
        self.release.wait(TIMEOUT)


async def test_a_hanging_publish_neither_blocks_the_loop_nor_cancellation() -> None:
    sink = BlockingSink()
    publisher = MetricsPublisher(CloudWatchConfig(SERVICE), sink)
    task = asyncio.create_task(publisher.run(lambda: SNAPSHOT))
    try:
        assert await asyncio.to_thread(sink.entered.wait, TIMEOUT)
        # the loop still runs other work while put() blocks in its thread
        assert await asyncio.wait_for(asyncio.sleep(0, result="alive"), TIMEOUT) == "alive"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)
        assert publisher.published == 0
    finally:
        sink.release.set()  # let the worker thread end before the loop closes


@pytest.mark.parametrize(
    ("fields", "problem"),
    [({"service": ""}, "service: must name"), ({"interval": 0.0}, "interval: 0.0 must be > 0")],
)
def test_a_cloudwatch_config_with_a_bad_value_names_the_key(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        CloudWatchConfig(**{"service": SERVICE, **fields})


@dataclasses.dataclass(frozen=True)
class ServerActivity:
    """Another snapshot type with the same three fields, as the server keeps its own."""

    active_connections: int
    active_streams: int
    last_activity: float


async def test_any_snapshot_with_the_three_fields_is_published() -> None:
    sink = FlakySink(failures=0)
    publisher = MetricsPublisher(CloudWatchConfig(SERVICE), sink)
    assert await publisher.publish(sink, ServerActivity(1, 3, NOW))
    (_, data) = sink.calls[0]
    assert [(d["MetricName"], d["Value"], d["Unit"]) for d in data] == [
        ("ActiveConnections", 1.0, "Count"),
        ("ActiveStreams", 3.0, "Count"),
        ("LastActivityEpochSeconds", NOW, "None"),
    ]
