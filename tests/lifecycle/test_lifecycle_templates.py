"""The CloudFormation templates: cfn-lint clean, and consistent with the code they deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fluidity.lifecycle import handlers

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "cloudformation"
TEMPLATES = sorted(TEMPLATE_DIR.glob("*.yaml"))
MAIN = TEMPLATE_DIR / "fluidity.yaml"
TLS_VARIABLES = {
    "FLUIDITY_SERVER__TLS__CA",
    "FLUIDITY_SERVER__TLS__CERT",
    "FLUIDITY_SERVER__TLS__KEY",
}


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags, read as their long JSON forms."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load(path: Path) -> dict[str, Any]:
    # a SafeLoader subclass: tags become plain dicts, never arbitrary objects
    document = yaml.load(path.read_text(), Loader=CfnLoader)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load(MAIN)


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def test_the_templates_are_where_the_docs_say() -> None:
    assert MAIN in TEMPLATES


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.name for p in TEMPLATES])
def test_cfn_lint_finds_nothing(path: Path) -> None:
    api = pytest.importorskip(
        "cfnlint.api", reason="cfn-lint is not installed (it is in the test extra)"
    )
    matches = api.lint_file(path, api.ManualArgs(include_checks=["I"]))
    assert [str(m) for m in matches] == []


def test_each_function_runs_the_handler_of_its_name(template: dict[str, Any]) -> None:
    functions = resources_of(template, "AWS::Lambda::Function")
    names = {props["Handler"].rsplit(".", 1)[1] for props in functions.values()}
    assert names == {"wake", "query", "sleep", "kill"}
    for props in functions.values():
        module, name = props["Handler"].rsplit(".", 1)
        assert module == "fluidity.lifecycle.handlers"
        assert callable(getattr(handlers, name))
        assert props["Runtime"] == {"Ref": "LambdaRuntime"}
        assert props["Code"] == {
            "S3Bucket": {"Ref": "LambdaCodeBucket"},
            "S3Key": {"Ref": "LambdaCodeKey"},
        }
        variables = props["Environment"]["Variables"]
        assert variables["FLUIDITY_SERVICE"] == {"Fn::GetAtt": ["Service", "Name"]}
        assert variables["FLUIDITY_CLUSTER"] == {"Ref": "Cluster"}
        assert variables["FLUIDITY_IDLE_MINUTES"] == {"Ref": "IdleMinutes"}
    runtimes = template["Parameters"]["LambdaRuntime"]["AllowedValues"]
    assert set(runtimes) <= {"python3.11", "python3.12"}


def test_wake_query_and_kill_have_sigv4_urls_and_sleep_has_none(
    template: dict[str, Any],
) -> None:
    urls = resources_of(template, "AWS::Lambda::Url")
    assert {props["AuthType"] for props in urls.values()} == {"AWS_IAM"}
    targets = {props["TargetFunctionArn"]["Fn::GetAtt"][0] for props in urls.values()}
    assert targets == {"WakeFunction", "QueryFunction", "KillFunction"}
    outputs = template["Outputs"]
    assert {"WakeUrl", "QueryUrl", "KillUrl"} <= outputs.keys()


def test_the_server_container_gets_its_pems_from_secrets_and_drains_in_time(
    template: dict[str, Any],
) -> None:
    (definition,) = resources_of(template, "AWS::ECS::TaskDefinition").values()
    (container,) = definition["ContainerDefinitions"]
    assert container["Command"] == ["server"]
    assert container["StopTimeout"] == 30
    assert container["ReadonlyRootFilesystem"] is True
    assert {s["Name"] for s in container["Secrets"]} == TLS_VARIABLES
    # plain entries; the conditional ones (Fn::If) are checked in test_lifecycle_stack_scaling
    environment = {e["Name"]: e["Value"] for e in container["Environment"] if "Name" in e}
    assert not TLS_VARIABLES & environment.keys()
    assert environment["FLUIDITY_SERVER__LISTEN"] == {"Fn::Sub": "0.0.0.0:${TunnelPort}"}
    service = template["Resources"]["Service"]["Properties"]
    assert environment["FLUIDITY_SERVER__CLOUDWATCH__SERVICE"] == service["ServiceName"]
    assert definition["RequiresCompatibilities"] == ["FARGATE"]


def test_the_service_sleeps_by_default_with_a_public_ip_and_only_the_tunnel_port(
    template: dict[str, Any],
) -> None:
    parameters = template["Parameters"]
    assert parameters["DesiredCount"]["Default"] == 0
    assert parameters["TunnelPort"]["Default"] == 443
    service = template["Resources"]["Service"]["Properties"]
    assert service["DesiredCount"] == {"Ref": "DesiredCount"}
    assert service["LaunchType"] == "FARGATE"
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "ENABLED"
    group = template["Resources"]["ServerSecurityGroup"]["Properties"]
    assert group["SecurityGroupIngress"] == [
        {
            "Description": group["SecurityGroupIngress"][0]["Description"],
            "IpProtocol": "tcp",
            "FromPort": {"Ref": "TunnelPort"},
            "ToPort": {"Ref": "TunnelPort"},
            "CidrIp": {"Ref": "AllowedCidr"},
        }
    ]


def test_the_task_role_may_only_put_metrics_in_the_fluidity_namespace(
    template: dict[str, Any],
) -> None:
    role = template["Resources"]["TaskRole"]["Properties"]
    (policy,) = role["Policies"]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == "cloudwatch:PutMetricData"
    assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Fluidity"}}


def actions_of(template: dict[str, Any], role: str) -> set[str]:
    """Every action a Lambda role is granted, through managed and inline policies."""
    resources = template["Resources"]
    props = resources[role]["Properties"]
    documents = [
        resources[ref["Ref"]]["Properties"]["PolicyDocument"]
        for ref in props.get("ManagedPolicyArns", [])
    ]
    documents += [p["PolicyDocument"] for p in props.get("Policies", [])]
    actions: set[str] = set()
    for document in documents:
        for statement in document["Statement"]:
            action = statement["Action"]
            actions.update([action] if isinstance(action, str) else action)
    return actions


def test_the_function_roles_hold_only_what_each_function_needs(template: dict[str, Any]) -> None:
    read = {
        "ecs:DescribeServices",
        "ecs:ListTasks",
        "ecs:DescribeTasks",
        "ec2:DescribeNetworkInterfaces",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    metrics = {"cloudwatch:GetMetricData", "cloudwatch:GetMetricStatistics"}
    roles = {
        name: props["Role"]["Fn::GetAtt"][0]
        for name, props in resources_of(template, "AWS::Lambda::Function").items()
    }
    change = {
        "ecs:UpdateService",
        "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:RegisterScalableTarget",
    }
    assert actions_of(template, roles["QueryFunction"]) == read
    assert actions_of(template, roles["WakeFunction"]) == read | change
    assert actions_of(template, roles["KillFunction"]) == read | change
    assert actions_of(template, roles["SleepFunction"]) == read | change | metrics
    scale = template["Resources"]["ScaleServicePolicy"]["Properties"]["PolicyDocument"]
    assert scale["Statement"][0]["Resource"] == {"Ref": "Service"}


def test_sleep_runs_every_five_minutes_and_kill_daily_at_2300_utc(
    template: dict[str, Any],
) -> None:
    parameters = template["Parameters"]
    assert parameters["SleepSchedule"]["Default"] == "rate(5 minutes)"
    assert parameters["KillSchedule"]["Default"] == "cron(0 23 * * ? *)"
    rules = resources_of(template, "AWS::Events::Rule")
    targets = {
        props["ScheduleExpression"]["Ref"]: props["Targets"][0]["Arn"]["Fn::GetAtt"][0]
        for props in rules.values()
    }
    assert targets == {"SleepSchedule": "SleepFunction", "KillSchedule": "KillFunction"}
