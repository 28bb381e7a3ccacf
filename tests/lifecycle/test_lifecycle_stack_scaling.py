"""The stack's auto scaling and load balancer: consistent with the code, accepted by the APIs.

The template is read as data (its intrinsic functions as plain dicts); the
scaling policies and the target group are then created in moto's Application
Auto Scaling and ELBv2 from the template's own properties, so a key the APIs
do not know fails here rather than in a deploy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lifecycle_world import REGION, RESOURCE_ID, FargateWorld
from test_lifecycle_templates import MAIN, load, resources_of

from fluidity.config.server import ServerConfig, load_server_config
from fluidity.lifecycle.aws import EcsScalableTarget

SERVER_DRAIN = ServerConfig.__dataclass_fields__["drain_timeout"].default


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load(MAIN)


def only_with_the_load_balancer(template: dict[str, Any], *names: str) -> None:
    for name in names:
        assert template["Resources"][name]["Condition"] == "UseLoadBalancer", name


def test_the_scalable_target_is_the_service_the_functions_address(
    template: dict[str, Any],
) -> None:
    only_with_the_load_balancer(
        template, "ScalableTarget", "CpuScalingPolicy", "TunnelsScalingPolicy"
    )
    target = template["Resources"]["ScalableTarget"]["Properties"]
    assert target["ServiceNamespace"] == "ecs"
    assert target["ScalableDimension"] == EcsScalableTarget.DIMENSION
    # the same shape EcsScalableTarget builds from FLUIDITY_CLUSTER and FLUIDITY_SERVICE
    assert target["ResourceId"] == {"Fn::Sub": "service/${Cluster}/${Service.Name}"}
    # deployed asleep unless the stack starts the service: the scaler cannot wake it
    assert target["MinCapacity"] == {"Fn::If": ["StartAwake", {"Ref": "MinTasks"}, 0]}
    assert target["MaxCapacity"] == {"Fn::If": ["StartAwake", {"Ref": "MaxTasks"}, 0]}
    parameters = template["Parameters"]
    assert (parameters["MinTasks"]["Default"], parameters["MaxTasks"]["Default"]) == (1, 4)
    assert parameters["MinTasks"]["MinValue"] == 1
    assert parameters["TargetCpuPercent"]["Default"] == 60


def test_every_function_knows_the_bounds_only_with_the_load_balancer(
    template: dict[str, Any],
) -> None:
    for props in resources_of(template, "AWS::Lambda::Function").values():
        variables = props["Environment"]["Variables"]
        for name, parameter in (
            ("FLUIDITY_MIN_TASKS", "MinTasks"),
            ("FLUIDITY_MAX_TASKS", "MaxTasks"),
        ):
            assert variables[name] == {"Fn::If": ["UseLoadBalancer", {"Ref": parameter}, ""]}


def test_scale_in_waits_longer_than_a_task_takes_to_leave(template: dict[str, Any]) -> None:
    """Deregistration delay above the drain; the stop timeout above the drain; scale-in
    cooldowns above both together, so one task has left before the next is picked."""
    group = template["Resources"]["TargetGroup"]["Properties"]
    attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
    delay = int(attributes["deregistration_delay.timeout_seconds"])
    assert delay > SERVER_DRAIN
    (definition,) = resources_of(template, "AWS::ECS::TaskDefinition").values()
    assert definition["ContainerDefinitions"][0]["StopTimeout"] > SERVER_DRAIN
    for name in ("CpuScalingPolicy", "TunnelsScalingPolicy"):
        config = template["Resources"][name]["Properties"]
        tracking = config["TargetTrackingScalingPolicyConfiguration"]
        assert config["PolicyType"] == "TargetTrackingScaling"
        assert tracking["ScaleInCooldown"] > delay + SERVER_DRAIN
        assert config["ScalingTargetId"] == {"Ref": "ScalableTarget"}


def test_the_tunnels_policy_tracks_the_metric_the_server_publishes(
    template: dict[str, Any],
) -> None:
    tracking = template["Resources"]["TunnelsScalingPolicy"]["Properties"][
        "TargetTrackingScalingPolicyConfiguration"
    ]
    metric = tracking["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"]) == ("Fluidity", "ActiveConnections")
    assert metric["Statistic"] == "Average"
    container = resources_of(template, "AWS::ECS::TaskDefinition")["TaskDefinition"]
    environment = {
        e["Name"]: e["Value"]
        for e in container["ContainerDefinitions"][0]["Environment"]
        if "Name" in e
    }
    assert metric["Dimensions"] == [
        {"Name": "ServiceName", "Value": environment["FLUIDITY_SERVER__CLOUDWATCH__SERVICE"]}
    ]
    assert tracking["TargetValue"] == {"Ref": "TargetTunnelsPerTask"}


def test_the_health_check_is_a_tcp_connect_to_the_tunnel_port(template: dict[str, Any]) -> None:
    group = template["Resources"]["TargetGroup"]["Properties"]
    assert (group["Protocol"], group["HealthCheckProtocol"]) == ("TCP", "TCP")
    assert group["HealthCheckPort"] == "traffic-port"
    assert group["Port"] == {"Ref": "TunnelPort"}


def resolved(value: Any) -> Any:
    """The template value with the parameters' defaults put in (what moto can take)."""
    defaults = {"TargetCpuPercent": 60, "TargetTunnelsPerTask": 200, "TunnelPort": 443}
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return defaults[value["Ref"]]
        if set(value) == {"Fn::Sub"}:
            return value["Fn::Sub"].replace("${AWS::StackName}", "fluidity")
        return {k: resolved(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolved(v) for v in value]
    return value


def test_moto_takes_the_scaling_policies_and_the_target_group_as_written(
    template: dict[str, Any], handler_env: FargateWorld
) -> None:
    import boto3

    handler_env.register_scalable_target(0, 0)
    for name in ("CpuScalingPolicy", "TunnelsScalingPolicy"):
        props = template["Resources"][name]["Properties"]
        handler_env.autoscaling.put_scaling_policy(
            PolicyName=resolved(props["PolicyName"]),
            ServiceNamespace="ecs",
            ResourceId=RESOURCE_ID,
            ScalableDimension=EcsScalableTarget.DIMENSION,
            PolicyType=props["PolicyType"],
            TargetTrackingScalingPolicyConfiguration=resolved(
                props["TargetTrackingScalingPolicyConfiguration"]
            ),
        )
    policies = handler_env.autoscaling.describe_scaling_policies(ServiceNamespace="ecs")
    assert sorted(p["PolicyName"] for p in policies["ScalingPolicies"]) == [
        "fluidity-cpu",
        "fluidity-tunnels",
    ]

    elbv2 = boto3.client("elbv2", region_name=REGION)
    group = template["Resources"]["TargetGroup"]["Properties"]
    vpc = handler_env.ec2.describe_subnets(SubnetIds=[handler_env.subnet])["Subnets"][0]["VpcId"]
    arn = elbv2.create_target_group(
        Name="fluidity",
        Protocol=group["Protocol"],
        Port=resolved(group["Port"]),
        VpcId=vpc,
        TargetType=group["TargetType"],
        HealthCheckProtocol=group["HealthCheckProtocol"],
        HealthCheckPort=group["HealthCheckPort"],
        HealthCheckIntervalSeconds=group["HealthCheckIntervalSeconds"],
        HealthyThresholdCount=group["HealthyThresholdCount"],
        UnhealthyThresholdCount=group["UnhealthyThresholdCount"],
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.modify_target_group_attributes(
        TargetGroupArn=arn, Attributes=group["TargetGroupAttributes"]
    )
    attributes = {
        a["Key"]: a["Value"]
        for a in elbv2.describe_target_group_attributes(TargetGroupArn=arn)["Attributes"]
    }
    assert float(attributes["deregistration_delay.timeout_seconds"]) > SERVER_DRAIN
    described = elbv2.describe_target_groups(TargetGroupArns=[arn])["TargetGroups"][0]
    assert (described["HealthCheckProtocol"], described["HealthCheckPort"]) == (
        "TCP",
        "traffic-port",
    )


def test_rebalancing_is_off_unless_asked_and_sets_real_config_keys(
    template: dict[str, Any], tmp_path: Path
) -> None:
    assert template["Parameters"]["RebalanceAboveTunnels"]["Default"] == 0
    (definition,) = resources_of(template, "AWS::ECS::TaskDefinition").values()
    conditional = [
        e["Fn::If"] for e in definition["ContainerDefinitions"][0]["Environment"] if "Fn::If" in e
    ]
    assert {c[0] for c in conditional} == {"Rebalance"}
    assert all(c[2] == {"Ref": "AWS::NoValue"} for c in conditional)
    variables = {c[1]["Name"]: c[1]["Value"] for c in conditional}
    assert variables == {
        "FLUIDITY_SERVER__REBALANCE__ENABLED": "true",
        "FLUIDITY_SERVER__REBALANCE__ABOVE": {"Ref": "RebalanceAboveTunnels"},
    }
    # the names are real config keys: the server's loader takes them
    pem = tmp_path / "x.pem"
    pem.write_text("-")
    tls = {f"FLUIDITY_SERVER__TLS__{k}": str(pem) for k in ("CA", "CERT", "KEY")}
    env = {**tls, "FLUIDITY_SERVER__REBALANCE__ENABLED": "true"}
    config = load_server_config(None, env={**env, "FLUIDITY_SERVER__REBALANCE__ABOVE": "300"})
    assert (config.rebalance.enabled, config.rebalance.above) == (True, 300)
