"""Fixtures for the lifecycle tests: fake AWS credentials and a moto Fargate world."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lifecycle_world import CLUSTER, REGION, SERVICE, FargateWorld
from moto import mock_aws
from moto.moto_api import state_manager


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake static credentials; no profile, config file or instance metadata is read."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFLUIDITYTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fluidity-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/fluidity-test/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/fluidity-test/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def fargate(aws_credentials: None) -> Iterator[FargateWorld]:
    with mock_aws():
        state_manager.set_transition("ecs::task", {"progression": "manual", "times": 10**9})
        try:
            yield FargateWorld.create()
        finally:
            state_manager.unset_transition("ecs::task")


@pytest.fixture
def handler_env(monkeypatch: pytest.MonkeyPatch, fargate: FargateWorld) -> FargateWorld:
    """The Lambda environment the CloudFormation template sets, over the moto world."""
    monkeypatch.setenv("FLUIDITY_CLUSTER", CLUSTER)
    monkeypatch.setenv("FLUIDITY_SERVICE", SERVICE)
    monkeypatch.setenv("FLUIDITY_IDLE_MINUTES", "15")
    monkeypatch.delenv("FLUIDITY_PUBLIC_ADDRESS", raising=False)
    return fargate
