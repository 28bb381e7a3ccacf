"""The AWS edge: the only module that imports boto3 and botocore.

It implements the gateways of :mod:`fluidity.lifecycle.operations` (the ECS service,
its scalable target in Application Auto Scaling, the activity metric), the metric
sink of :mod:`fluidity.lifecycle.cloudwatch`, and SigV4 signing for
:mod:`fluidity.lifecycle.client`. Everyone else imports it lazily, inside a
function, so that ``import fluidity.lifecycle.decisions`` works where boto3 is
not installed. botocore's exceptions are translated into
:class:`~fluidity.errors.LifecycleError` here and nowhere else.

Clients are injectable (``ecs=``, ``ec2=``, ``cloudwatch=``, ``autoscaling=``) so
tests can hand in clients bound to moto; by default they come from boto3's
standard credential and region chain (in Lambda: the function's role and ``AWS_REGION``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, cast

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.exceptions
import botocore.session

from fluidity.errors import ConfigError, LifecycleError
from fluidity.lifecycle.decisions import ServiceView, TaskView
from fluidity.lifecycle.scaling import Limits

if TYPE_CHECKING:
    from mypy_boto3_application_autoscaling import ApplicationAutoScalingClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import MetricDatumTypeDef
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_ecs.type_defs import TaskTypeDef

_DESCRIBE_TASKS_MAX = 100  # ECS DescribeTasks takes at most 100 ARNs per call
_REGION_FIX = "set AWS_REGION (or a region in the config) and check the AWS credentials"


@contextlib.contextmanager
def translated(action: str, fix: str) -> Iterator[None]:
    """Turn botocore's errors raised inside into a :class:`LifecycleError` naming the call."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise LifecycleError(
            f"{action} failed: {error.get('Code', '?')}: {error.get('Message', exc)}; {fix}"
        ) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise LifecycleError(f"{action} failed: {exc}; {fix}") from exc


class EcsService:
    """:class:`~fluidity.lifecycle.operations.ServiceGateway` over ECS and EC2."""

    def __init__(
        self,
        cluster: str,
        service: str,
        *,
        ecs: ECSClient | None = None,
        ec2: EC2Client | None = None,
        region: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.service = service
        with translated("creating the ECS and EC2 clients", _REGION_FIX):
            self._ecs = ecs or boto3.client("ecs", region_name=region)
            self._ec2 = ec2 or boto3.client("ec2", region_name=region)
        self._fix = (
            f"check that service {service!r} exists in cluster {cluster!r} "
            "(FLUIDITY_CLUSTER, FLUIDITY_SERVICE) and that the role may call ECS and EC2"
        )

    def describe(self) -> ServiceView:
        """Desired count, then the service's RUNNING-desired tasks with their addresses."""
        with translated("ecs:DescribeServices", self._fix):
            found = self._ecs.describe_services(cluster=self.cluster, services=[self.service])
        services = [s for s in found.get("services", []) if s.get("status") != "INACTIVE"]
        if not services:
            raise LifecycleError(f"ECS service {self.service!r} not found; {self._fix}")
        tasks = self._tasks()
        addresses = self._public_ips([eni for t in tasks if (eni := _eni_of(t))])
        views = tuple(_task_view(t, addresses) for t in tasks)
        return ServiceView(services[0].get("desiredCount", 0), views)

    def set_desired_count(self, count: int) -> None:
        with translated(f"ecs:UpdateService (desiredCount={count})", self._fix):
            self._ecs.update_service(cluster=self.cluster, service=self.service, desiredCount=count)

    def _tasks(self) -> list[TaskTypeDef]:
        """The service's tasks that ECS wants running (stopping ones are left out)."""
        arns: list[str] = []
        with translated("ecs:ListTasks", self._fix):
            pages = self._ecs.get_paginator("list_tasks").paginate(
                cluster=self.cluster, serviceName=self.service, desiredStatus="RUNNING"
            )
            for page in pages:
                arns.extend(page.get("taskArns", []))
        tasks: list[TaskTypeDef] = []
        for i in range(0, len(arns), _DESCRIBE_TASKS_MAX):
            with translated("ecs:DescribeTasks", self._fix):
                chunk = arns[i : i + _DESCRIBE_TASKS_MAX]
                tasks.extend(self._ecs.describe_tasks(cluster=self.cluster, tasks=chunk)["tasks"])
        # ListTasks filters by service already; the group check keeps standalone
        # tasks started from the same task definition out of the picture.
        return [t for t in tasks if t.get("group", "") == f"service:{self.service}"]

    def _public_ips(self, eni_ids: Sequence[str]) -> dict[str, str]:
        """Public IPv4 of each network interface that has one.

        A filter rather than ``NetworkInterfaceIds=``: the interface of a task that is
        stopping may already be gone, which would fail the whole lookup.
        """
        if not eni_ids:
            return {}
        with translated("ec2:DescribeNetworkInterfaces", self._fix):
            found = self._ec2.describe_network_interfaces(
                Filters=[{"Name": "network-interface-id", "Values": list(eni_ids)}]
            )
        return {
            eni["NetworkInterfaceId"]: eni["Association"]["PublicIp"]
            for eni in found.get("NetworkInterfaces", [])
            if eni.get("Association", {}).get("PublicIp")
        }


class EcsScalableTarget:
    """:class:`~fluidity.lifecycle.operations.ScalingGateway`: the service's desired count
    as a scalable target of Application Auto Scaling (``ecs:service:DesiredCount``)."""

    DIMENSION: Final = "ecs:service:DesiredCount"

    def __init__(
        self,
        cluster: str,
        service: str,
        *,
        autoscaling: ApplicationAutoScalingClient | None = None,
        region: str | None = None,
    ) -> None:
        # A cluster ARN (arn:...:cluster/NAME) works too: the resource id wants the name.
        self.resource_id = f"service/{cluster.rsplit('/', 1)[-1]}/{service}"
        with translated("creating the Application Auto Scaling client", _REGION_FIX):
            self._aas = autoscaling or boto3.client("application-autoscaling", region_name=region)
        self._fix = (
            f"check that the stack registered {self.resource_id} as a scalable target "
            "and that the role may call application-autoscaling"
        )

    def limits(self) -> Limits | None:
        with translated("application-autoscaling:DescribeScalableTargets", self._fix):
            found = self._aas.describe_scalable_targets(
                ServiceNamespace="ecs",
                ResourceIds=[self.resource_id],
                ScalableDimension=self.DIMENSION,
            )
        for target in found.get("ScalableTargets", []):
            return Limits(target["MinCapacity"], target["MaxCapacity"])
        return None

    def set_limits(self, limits: Limits) -> None:
        action = (
            "application-autoscaling:RegisterScalableTarget "
            f"(min {limits.min_tasks}, max {limits.max_tasks})"
        )
        with translated(action, self._fix):
            self._aas.register_scalable_target(
                ServiceNamespace="ecs",
                ResourceId=self.resource_id,
                ScalableDimension=self.DIMENSION,
                MinCapacity=limits.min_tasks,
                MaxCapacity=limits.max_tasks,
            )


def _eni_of(task: TaskTypeDef) -> str | None:
    """The awsvpc network interface id from the task's attachment details."""
    for attachment in task.get("attachments", []):
        if attachment.get("type") != "ElasticNetworkInterface":
            continue
        for detail in attachment.get("details", []):
            if detail.get("name") == "networkInterfaceId":
                return detail.get("value")
    return None


def _task_view(task: TaskTypeDef, addresses: Mapping[str, str]) -> TaskView:
    started = task.get("startedAt")
    eni = _eni_of(task)
    return TaskView(
        arn=task.get("taskArn", "?"),
        last_status=task.get("lastStatus", "UNKNOWN"),
        desired_status=task.get("desiredStatus", "RUNNING"),
        started_at=started.timestamp() if started is not None else None,
        public_ip=addresses.get(eni) if eni else None,
        health=task.get("healthStatus", "UNKNOWN"),
    )


class CloudWatchActivity:
    """:class:`~fluidity.lifecycle.operations.ActivityGateway` over CloudWatch metrics."""

    METRIC = "LastActivityEpochSeconds"

    def __init__(
        self,
        service: str,
        *,
        namespace: str = "Fluidity",
        cloudwatch: CloudWatchClient | None = None,
        region: str | None = None,
    ) -> None:
        self.service = service
        self.namespace = namespace
        with translated("creating the CloudWatch client", _REGION_FIX):
            self._cw = cloudwatch or boto3.client("cloudwatch", region_name=region)

    def last_activity(self, *, now: float, lookback_seconds: float) -> float | None:
        """The maximum of the metric over the look-back: the newest activity of any task."""
        end = datetime.fromtimestamp(now, UTC) + timedelta(minutes=1)
        query: Any = {
            "Id": "last",
            "MetricStat": {
                "Metric": {
                    "Namespace": self.namespace,
                    "MetricName": self.METRIC,
                    "Dimensions": [{"Name": "ServiceName", "Value": self.service}],
                },
                "Period": 60,
                "Stat": "Maximum",
            },
        }
        with translated("cloudwatch:GetMetricData", "check the role may read CloudWatch"):
            found = self._cw.get_metric_data(
                MetricDataQueries=[query],
                StartTime=end - timedelta(seconds=lookback_seconds),
                EndTime=end,
            )
        values = [v for r in found.get("MetricDataResults", []) for v in r.get("Values", [])]
        return max(values) if values else None


class CloudWatchSink:
    """:class:`~fluidity.lifecycle.cloudwatch.MetricSink` that calls ``PutMetricData``."""

    def __init__(
        self, *, cloudwatch: CloudWatchClient | None = None, region: str | None = None
    ) -> None:
        with translated("creating the CloudWatch client", _REGION_FIX):
            self._cw = cloudwatch or boto3.client("cloudwatch", region_name=region)

    def put(self, namespace: str, data: Sequence[Mapping[str, Any]]) -> None:
        metric_data = cast("list[MetricDatumTypeDef]", [dict(d) for d in data])
        with translated(
            "cloudwatch:PutMetricData",
            f"check the task role allows cloudwatch:PutMetricData in namespace {namespace!r}",
        ):
            self._cw.put_metric_data(Namespace=namespace, MetricData=metric_data)


class SigV4Signer:
    """Signs function-URL requests (service ``lambda``) with the standard credential chain.

    Credentials are looked up once (environment, profile, SSO, instance role...) and
    frozen per request, so refreshable credentials are refreshed by botocore.
    """

    def __init__(self, region: str | None = None) -> None:
        session = botocore.session.get_session()
        self.region = region or session.get_config_variable("region")
        if not self.region:
            raise ConfigError(
                "lifecycle.region: no AWS region known; set lifecycle.region in agent.yaml, "
                "AWS_REGION, or a region in your AWS profile"
            )
        credentials = session.get_credentials()
        if credentials is None:
            raise ConfigError(
                "no AWS credentials found for signing the lifecycle calls; set AWS_PROFILE, "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run 'aws sso login'"
            )
        self._credentials = credentials

    def sign(self, method: str, url: str, body: bytes) -> dict[str, str]:
        """The request's headers including ``Authorization``, ``X-Amz-Date`` (and token)."""
        request = botocore.awsrequest.AWSRequest(
            method=method, url=url, data=body, headers={"Content-Type": "application/json"}
        )
        with translated("signing the request", "check your AWS credentials"):
            frozen = self._credentials.get_frozen_credentials()
            botocore.auth.SigV4Auth(frozen, "lambda", self.region).add_auth(request)
        return {k: str(v) for k, v in request.headers.items()}
