"""The agent's control-plane client against a fake function-URL endpoint on loopback."""

from __future__ import annotations

import itertools
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from fake_control_plane import ADDRESS, READY, STARTING, STOPPED, Answer, FakeControlPlane
from lifecycle_world import REGION

from fluidity.errors import ConfigError, LifecycleError, TunnelUnavailable
from fluidity.lifecycle.client import Backoff, ControlPlaneClient, LifecycleConfig, region_of
from fluidity.lifecycle.decisions import ServerStatus, Status

TIMEOUT = 5.0
FAST = Backoff(initial=0.001, maximum=0.004)

Serve = Callable[..., FakeControlPlane]


@pytest.fixture
def serve(aws_credentials: None) -> Iterator[Serve]:
    """Start a fake control plane with the given scripts; stopped after the test."""
    with ExitStack() as stack:

        def start(**scripts: list[Answer]) -> FakeControlPlane:
            plane = FakeControlPlane({f"/{name}": answers for name, answers in scripts.items()})
            return stack.enter_context(plane.running())

        yield start


def client_for(plane: FakeControlPlane, **overrides: object) -> ControlPlaneClient:
    config = LifecycleConfig(
        wake_url=plane.url("/wake"),
        query_url=plane.url("/query"),
        kill_url=plane.url("/kill"),
        region=REGION,
        ready_timeout=TIMEOUT,
    )
    for name, value in overrides.items():
        config = LifecycleConfig(**{**config.__dict__, name: value})
    return ControlPlaneClient(config, backoff=FAST)


async def test_wait_until_ready_wakes_then_polls_until_ready(serve: Serve) -> None:
    plane = serve(wake=[STARTING], query=[STARTING, STARTING, STARTING, READY])
    lines: list[str] = []
    address = await client_for(plane).wait_until_ready(lines.append)
    assert address == ADDRESS
    assert plane.calls() == ["POST /wake"] + ["GET /query"] * 4
    assert len(lines) == 5
    assert all(re.fullmatch(r"waking server… starting \(\d+ s\)", line) for line in lines[:4])
    assert re.fullmatch(r"ready at 203\.0\.113\.7 after \d+ s", lines[-1])


async def test_every_call_is_signed_with_sigv4_for_lambda(serve: Serve) -> None:
    plane = serve(wake=[STARTING], query=[READY])
    await client_for(plane).wait_until_ready(lambda _: None)
    for seen in plane.seen:
        headers = {k.lower(): v for k, v in seen.headers.items()}
        assert re.fullmatch(
            rf"AWS4-HMAC-SHA256 Credential=AKIDFLUIDITYTEST/\d{{8}}/{REGION}/lambda/aws4_request, "
            r"SignedHeaders=[a-z0-9;-]+, Signature=[0-9a-f]{64}",
            headers["authorization"],
        )
        assert re.fullmatch(r"\d{8}T\d{6}Z", headers["x-amz-date"])
        assert "x-amz-security-token" not in headers


async def test_a_session_token_is_sent_with_temporary_credentials(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLETOKEN")
    plane = serve(query=[STOPPED])
    assert await client_for(plane).query() == ServerStatus(Status.STOPPED)
    (seen,) = plane.seen
    assert seen.headers["X-Amz-Security-Token"] == "FwoGZXIvYXdzEXAMPLETOKEN"
    assert "x-amz-security-token" in seen.headers["Authorization"]


async def test_the_region_comes_from_the_function_url_when_not_configured() -> None:
    assert region_of("https://abc123.lambda-url.eu-west-1.on.aws/") == "eu-west-1"
    assert region_of("https://abc123.lambda-url.us-gov-west-1.on.aws") == "us-gov-west-1"
    assert region_of("http://127.0.0.1:8000/wake") is None


async def test_an_already_running_server_is_ready_at_once(serve: Serve) -> None:
    plane = serve(wake=[READY])
    assert await client_for(plane).wait_until_ready(lambda _: None) == ADDRESS
    assert plane.calls() == ["POST /wake"]


async def test_a_server_stopped_while_waiting_is_woken_again(serve: Serve) -> None:
    plane = serve(wake=[STARTING], query=[STOPPED, READY])
    assert await client_for(plane).wait_until_ready(lambda _: None) == ADDRESS
    assert plane.calls() == ["POST /wake", "GET /query", "POST /wake", "GET /query"]


async def test_transient_errors_are_retried(serve: Serve) -> None:
    plane = serve(
        wake=[(500, {"error": "ecs:UpdateService failed: Throttling"}), STARTING],
        query=[(429, {"Message": "Too Many Requests"}), READY],
    )
    lines: list[str] = []
    assert await client_for(plane).wait_until_ready(lines.append) == ADDRESS
    assert plane.calls() == ["POST /wake", "POST /wake", "GET /query", "GET /query"]
    assert "answered 500: ecs:UpdateService failed: Throttling" in lines[0]
    assert "answered 429: Too Many Requests" in lines[2]


async def test_a_refusal_is_not_retried_and_names_the_fix(serve: Serve) -> None:
    plane = serve(wake=[(403, {"Message": "Forbidden"})])
    with pytest.raises(TunnelUnavailable, match="lambda:InvokeFunctionUrl"):
        await client_for(plane).wait_until_ready(lambda _: None)
    assert plane.calls() == ["POST /wake"]


async def test_not_ready_in_time_raises_tunnel_unavailable(serve: Serve) -> None:
    plane = serve(wake=[STARTING], query=[STARTING])
    client = client_for(plane, ready_timeout=0.5)
    await client.query()  # credentials are loaded once; keep that out of the budget
    with pytest.raises(TunnelUnavailable, match=r"not ready after 0 s \(starting\)"):
        await client.wait_until_ready(lambda _: None)
    assert plane.calls()[:2] == ["GET /query", "POST /wake"]
    assert len(plane.calls()) > 3


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_control_plane_times_out_with_the_cause(
    aws_credentials: None,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    config = LifecycleConfig(f"{url}/wake", f"{url}/query", region=REGION, ready_timeout=0.3)
    client = ControlPlaneClient(config, backoff=FAST)
    with pytest.raises(LifecycleError, match="Connection refused"):
        await client.query()
    lines: list[str] = []
    with pytest.raises(TunnelUnavailable, match=r"not ready after 0 s \(.*Connection refused"):
        await client.wait_until_ready(lines.append)
    assert lines


async def test_query_and_kill_answer_the_status(serve: Serve) -> None:
    plane = serve(query=[READY], kill=[STOPPED])
    client = client_for(plane)
    assert await client.query() == ServerStatus(Status.READY, ADDRESS)
    assert await client.kill() == ServerStatus(Status.STOPPED)
    assert plane.calls() == ["GET /query", "POST /kill"]


async def test_errors_from_single_calls_are_lifecycle_errors(serve: Serve) -> None:
    plane = serve(query=[(500, {"error": "ECS service 'x' not found"})], kill=[(200, {})])
    client = client_for(plane)
    with pytest.raises(LifecycleError, match="answered 500: ECS service 'x' not found"):
        await client.query()
    with pytest.raises(LifecycleError, match="no valid 'status'"):
        await client.kill()
    with pytest.raises(ConfigError, match="kill_url"):
        await client_for(plane, kill_url=None).kill()


async def test_no_credentials_is_a_config_error(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = serve(query=[READY])
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="no AWS credentials"):
        await client_for(plane).query()
    assert plane.calls() == []


async def test_no_region_is_a_config_error(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    plane = serve(query=[READY])
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(ConfigError, match=r"lifecycle\.region"):
        await client_for(plane, region=None).query()


def test_backoff_doubles_from_one_second_to_ten() -> None:
    assert list(itertools.islice(Backoff().delays(), 6)) == [1, 2, 4, 8, 10, 10]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"wake_url": "lambda-url.eu-west-1.on.aws/"}, "wake_url: 'lambda-url"),
        ({"kill_url": "ftp://x/"}, "kill_url"),
        ({"ready_timeout": 0.0}, "ready_timeout: 0.0 must be > 0"),
    ],
)
def test_a_lifecycle_config_with_a_bad_value_names_the_key(
    fields: dict[str, object], problem: str
) -> None:
    base: dict[str, object] = {"wake_url": "https://w/", "query_url": "https://q/"}
    with pytest.raises(ConfigError, match=re.escape(problem)):
        LifecycleConfig(**{**base, **fields})  # type: ignore[arg-type]
