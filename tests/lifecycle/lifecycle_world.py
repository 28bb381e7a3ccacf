"""A moto Fargate world for the lifecycle tests, playing the part of ECS.

moto does not launch tasks for a service, so :class:`FargateWorld` does:
``start_task`` runs a Fargate task in the service's group, gives its network
interface an Elastic IP (the public address), and sets its start time. Task
states are frozen by the ``fargate`` fixture (moto otherwise walks a task towards
STOPPED on every ``DescribeTasks``), so a test sees exactly the state it set up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ecs.models import ecs_backends

REGION = "eu-west-1"
CLUSTER = "fluidity"
SERVICE = "fluidity-server"
RESOURCE_ID = f"service/{CLUSTER}/{SERVICE}"


@dataclass
class FargateWorld:
    """A VPC, a cluster, a Fargate task definition and a service at desired count 0."""

    ecs: Any
    ec2: Any
    cloudwatch: Any
    subnet: str
    security_group: str
    task_definition: str
    started: list[str] = field(default_factory=list)

    @classmethod
    def create(cls) -> FargateWorld:
        ecs = boto3.client("ecs", region_name=REGION)
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(
            GroupName="fluidity-server", Description="tunnel port", VpcId=vpc
        )["GroupId"]
        ecs.create_cluster(clusterName=CLUSTER)
        task_definition = ecs.register_task_definition(
            family="fluidity-server",
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu="256",
            memory="512",
            containerDefinitions=[
                {"name": "server", "image": "fluidity:test", "cpu": 256, "memory": 512}
            ],
        )["taskDefinition"]["taskDefinitionArn"]
        world = cls(
            ecs,
            ec2,
            boto3.client("cloudwatch", region_name=REGION),
            subnet,
            group,
            task_definition,
        )
        ecs.create_service(
            cluster=CLUSTER,
            serviceName=SERVICE,
            taskDefinition=task_definition,
            desiredCount=0,
            launchType="FARGATE",
            networkConfiguration=world.network,
        )
        return world

    @property
    def network(self) -> dict[str, Any]:
        return {
            "awsvpcConfiguration": {
                "subnets": [self.subnet],
                "securityGroups": [self.security_group],
                "assignPublicIp": "ENABLED",
            }
        }

    @property
    def desired_count(self) -> int:
        found = self.ecs.describe_services(cluster=CLUSTER, services=[SERVICE])
        return int(found["services"][0]["desiredCount"])

    def set_desired_count(self, count: int) -> None:
        self.ecs.update_service(cluster=CLUSTER, service=SERVICE, desiredCount=count)

    @property
    def autoscaling(self) -> Any:
        return boto3.client("application-autoscaling", region_name=REGION)

    def register_scalable_target(self, min_tasks: int, max_tasks: int) -> None:
        """Register the service with Application Auto Scaling, as the stack does."""
        self.autoscaling.register_scalable_target(
            ServiceNamespace="ecs",
            ResourceId=RESOURCE_ID,
            ScalableDimension="ecs:service:DesiredCount",
            MinCapacity=min_tasks,
            MaxCapacity=max_tasks,
        )

    @property
    def limits(self) -> tuple[int, int] | None:
        """(min, max) of the scalable target, or None when there is none."""
        found = self.autoscaling.describe_scalable_targets(
            ServiceNamespace="ecs", ResourceIds=[RESOURCE_ID]
        )["ScalableTargets"]
        return (found[0]["MinCapacity"], found[0]["MaxCapacity"]) if found else None

    def start_task(
        self,
        *,
        started_ago: float | None = 60.0,
        public: bool = True,
        status: str = "RUNNING",
        group: str = f"service:{SERVICE}",
    ) -> tuple[str, str | None]:
        """Run one task of the service as ECS would; return its ARN and public IP."""
        task = self.ecs.run_task(
            cluster=CLUSTER,
            taskDefinition=self.task_definition,
            launchType="FARGATE",
            group=group,
            networkConfiguration=self.network,
        )["tasks"][0]
        model = ecs_backends[DEFAULT_ACCOUNT_ID][REGION].tasks[CLUSTER][task["taskArn"]]
        model.last_status = status
        if started_ago is not None:
            model.started_at = datetime.fromtimestamp(time.time() - started_ago, UTC)
        ip = self._attach_public_ip(task) if public else None
        self.started.append(task["taskArn"])
        return task["taskArn"], ip

    def _attach_public_ip(self, task: dict[str, Any]) -> str:
        details = task["attachments"][0]["details"]
        eni = next(d["value"] for d in details if d["name"] == "networkInterfaceId")
        allocation = self.ec2.allocate_address(Domain="vpc")
        self.ec2.associate_address(AllocationId=allocation["AllocationId"], NetworkInterfaceId=eni)
        return str(allocation["PublicIp"])

    def report_activity(self, seconds_ago: float) -> None:
        """Publish ``LastActivityEpochSeconds`` as the server would."""
        self.cloudwatch.put_metric_data(
            Namespace="Fluidity",
            MetricData=[
                {
                    "MetricName": "LastActivityEpochSeconds",
                    "Dimensions": [{"Name": "ServiceName", "Value": SERVICE}],
                    "Value": time.time() - seconds_ago,
                }
            ],
        )
