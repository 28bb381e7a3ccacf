"""``fluidity cloud wake|status|kill`` against a fake control plane on loopback."""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_control_plane import ADDRESS, READY, STARTING, STOPPED, FakeControlPlane
from lifecycle_world import REGION

from fluidity.lifecycle.cli import add_parser
from fluidity.lifecycle.client import LifecycleConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fluidity")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["cloud", *argv])


@pytest.fixture
def plane(aws_credentials: None) -> Iterator[FakeControlPlane]:
    fake = FakeControlPlane({"/wake": [STARTING], "/query": [STARTING, READY], "/kill": [STOPPED]})
    with fake.running():
        yield fake


def url_flags(plane: FakeControlPlane) -> list[str]:
    return [
        f"--wake-url={plane.url('/wake')}",
        f"--query-url={plane.url('/query')}",
        f"--kill-url={plane.url('/kill')}",
        f"--region={REGION}",
    ]


def run(*argv: str) -> int:
    args = parse(*argv)
    status = args.func(args)
    assert isinstance(status, int)
    return status


def test_wake_waits_until_ready_and_prints_the_address(
    aws_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeControlPlane({"/wake": [STARTING], "/query": [READY]})
    with fake.running():  # one real 1 s backoff step between wake and query
        assert run("wake", *url_flags(fake)) == 0
    out, err = capsys.readouterr()
    assert out == f"{ADDRESS}\n"
    assert "waking server… starting" in err
    assert f"ready at {ADDRESS}" in err


def test_wake_no_wait_returns_after_one_call(
    plane: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("wake", "--no-wait", *url_flags(plane)) == 0
    assert capsys.readouterr().out == "starting\n"
    assert plane.calls() == ["POST /wake"]


def test_status_prints_the_state_and_address(
    plane: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("status", *url_flags(plane)) == 0
    assert run("status", *url_flags(plane)) == 0
    assert capsys.readouterr().out == f"starting\nready {ADDRESS}\n"


def test_status_prints_the_running_tasks_when_the_control_plane_counts_them(
    aws_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {"status": "ready", "address": ADDRESS, "tasks": 3}
    fake = FakeControlPlane({"/query": [(200, answer)], "/wake": [], "/kill": []})
    with fake.running():
        assert run("status", *url_flags(fake)) == 0
    assert capsys.readouterr().out == f"ready {ADDRESS} (3 running)\n"


def test_kill_prints_stopped(plane: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("kill", *url_flags(plane)) == 0
    assert capsys.readouterr().out == "stopped\n"
    assert plane.calls() == ["POST /kill"]


def test_no_urls_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("status") == 2
    assert "--wake-url and --query-url" in capsys.readouterr().err


def test_kill_without_a_kill_url_is_a_usage_error(
    plane: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [f for f in url_flags(plane) if not f.startswith("--kill-url")]
    assert run("kill", *flags) == 2
    assert "kill_url" in capsys.readouterr().err


def test_a_control_plane_failure_exits_1(
    aws_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeControlPlane({"/query": [(500, {"error": "ecs:DescribeServices failed"})]})
    with fake.running():
        assert run("status", *url_flags(fake)) == 1
    assert "answered 500: ecs:DescribeServices failed" in capsys.readouterr().err


def test_wake_times_out_with_exit_1(
    aws_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeControlPlane({"/wake": [STARTING], "/query": [STARTING]})
    with fake.running():
        assert run("wake", "--timeout=0.3", *url_flags(fake)) == 1
    assert "not ready after 0 s" in capsys.readouterr().err


def fake_config_module(lifecycle: LifecycleConfig | None) -> types.ModuleType:
    """Stands in for ``fluidity.config.agent`` as the CLI uses it: ``load_agent_config(path)``."""
    module = types.ModuleType("fluidity.config.agent")

    def load_agent_config(path: Path) -> types.SimpleNamespace:
        assert path == Path("agent.yaml")
        return types.SimpleNamespace(lifecycle=lifecycle)

    module.load_agent_config = load_agent_config  # type: ignore[attr-defined]
    return module


def test_urls_come_from_the_agent_config_and_flags_override_them(
    plane: FakeControlPlane, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lifecycle = LifecycleConfig(
        wake_url=plane.url("/wake"),
        query_url="http://127.0.0.1:9/unused",
        kill_url=plane.url("/kill"),
        region=REGION,
    )
    monkeypatch.setitem(sys.modules, "fluidity.config.agent", fake_config_module(lifecycle))
    assert run("kill", "--config", "agent.yaml") == 0
    assert run("wake", "--no-wait", "--config", "agent.yaml") == 0
    assert run("status", "--config", "agent.yaml", f"--query-url={plane.url('/query')}") == 0
    assert plane.calls() == ["POST /kill", "POST /wake", "GET /query"]
    assert capsys.readouterr().out == "stopped\nstarting\nstarting\n"


def test_an_agent_config_without_lifecycle_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "fluidity.config.agent", fake_config_module(None))
    assert run("status", "--config", "agent.yaml") == 2
    assert "no lifecycle: section" in capsys.readouterr().err


def test_wake_progress_follows_the_log_format(aws_credentials: None) -> None:
    """``fluidity --log-format json cloud wake``: progress lines are JSON records too."""
    import json
    import os
    import subprocess

    fake = FakeControlPlane({"/wake": [STARTING], "/query": [READY]})
    with fake.running():  # one real 1 s backoff step between wake and query
        result = subprocess.run(
            [sys.executable, "-m", "fluidity.cli", "--log-format", "json", "cloud", "wake",
             *url_flags(fake)],
            capture_output=True, text=True, timeout=60, env=dict(os.environ),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{ADDRESS}\n"
    messages = [json.loads(line)["message"] for line in result.stderr.splitlines()]
    assert messages[0].startswith("waking server… starting")
    assert messages[-1].startswith(f"ready at {ADDRESS}")
