"""Logs: readable lines or JSON on every command, levels honoured, secrets never written."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fluidity.cli import build_parser
from fluidity.observe.logs import JsonFormatter, TextFormatter, redact
from fluidity.pki.certs import QuickstartPKI
from support.harness import LOOPBACK, Process, agent_yaml, server_yaml, start_process
from support.origins import RecordingOrigin

PASSWORD = "correct-horse-battery-staple-42"


def leaf_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    leaves = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                leaves += leaf_parsers(child, (*path, name))
    return leaves or [(path, parser)]


def test_every_command_takes_log_level_and_log_format() -> None:
    leaves = leaf_parsers(build_parser())
    names = {" ".join(path) for path, _ in leaves}
    assert {
        "agent",
        "server",
        "status",
        "quickstart",
        "health",
        "certs init",
        "cloud wake",
    } <= names
    for path, parser in leaves:
        options = parser._option_string_actions
        assert "--log-level" in options and "--log-format" in options, path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fluidity.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_failure_is_one_json_record_with_json_logs(where: str) -> None:
    command = ["status", "--address", f"{LOOPBACK}:1"]
    flags = ["--log-format", "json"]
    result = run_cli(*(flags + command if where == "before" else command + flags))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "error"
    assert "no agent is listening" in record["message"]
    assert record["time"].endswith("Z")


def test_config_errors_too(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("server: nowhere\n")
    result = run_cli("agent", "--config", str(bad), "--log-format", "json")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert json.loads(line)["message"].startswith("config error: ")


def test_quickstart_self_test_logs_json_lines(tmp_path: Path) -> None:
    result = run_cli(
        "quickstart",
        "--self-test",
        "--dir",
        str(tmp_path),
        "--log-format",
        "json",
        "--log-level",
        "debug",
    )
    assert result.returncode == 0, result.stderr
    assert "self-test passed" in result.stdout
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(r["level"] == "debug" for r in records)
    assert any("tunnel up after" in r["message"] for r in records)


def test_warning_level_keeps_info_out(tmp_path: Path) -> None:
    result = run_cli("quickstart", "--self-test", "--dir", str(tmp_path), "--log-level", "warning")
    assert result.returncode == 0, result.stderr
    assert " INFO " not in result.stderr and "tunnel up" not in result.stderr


# -- secrets -------------------------------------------------------------------------------


def test_credentials_are_masked_in_both_formats() -> None:
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    message = f"Proxy-Authorization: Basic {token} via http://alice:{PASSWORD}@proxy:3128/"
    record = logging.LogRecord("fluidity", logging.INFO, __file__, 1, message, None, None)
    for formatter in (TextFormatter(), JsonFormatter()):
        text = formatter.format(record)
        assert PASSWORD not in text and token not in text
        assert "Basic ***" in text and "alice:***@proxy" in text
    assert redact("the Negotiate handshake failed") == "the Negotiate handshake failed"


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_an_agent_with_credentials_never_logs_them(
    fmt: str,
    pki: QuickstartPKI,
    tmp_path: Path,
    processes: list[Process],
    origin: RecordingOrigin,
) -> None:
    server = start_process("server", server_yaml(pki), tmp_path, args=["--log-level", "debug"])
    processes.append(server)
    auth = {"username": "alice", "password_env": "FLUIDITY_TEST_PASSWORD"}
    agent = start_process(
        "agent",
        agent_yaml(pki, server.port, auth=auth, log_level="debug", log_format=fmt),
        tmp_path,
        env={"FLUIDITY_TEST_PASSWORD": PASSWORD},
    )
    processes.append(agent)
    proxy = f"http://alice:{PASSWORD}@{LOOPBACK}:{agent.port}"
    async with httpx.AsyncClient(proxy=proxy, trust_env=False, timeout=10) as client:
        assert (await client.get(f"{origin.url}/hello")).text == "hello"
    wrong = f"http://alice:wrong@{LOOPBACK}:{agent.port}"
    async with httpx.AsyncClient(proxy=wrong, trust_env=False, timeout=10) as client:
        assert (await client.get(f"{origin.url}/x")).status_code == 407
    agent.popen.terminate()
    agent.popen.wait(timeout=10)
    log = agent.log()
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert PASSWORD not in log and token not in log
    assert "tunnel up after" in log
    if fmt == "json":
        for line in log.splitlines():
            json.loads(line)  # every line is a record


def test_quickstart_says_it_is_making_certificates_the_first_time(tmp_path: Path) -> None:
    first = run_cli("quickstart", "--self-test", "--dir", str(tmp_path / "state"))
    assert first.returncode == 0, first.stderr
    assert f"creating a private CA and certificates in {tmp_path / 'state'}…" in first.stderr
    assert "certificates ready after " in first.stderr
    again = run_cli("quickstart", "--self-test", "--dir", str(tmp_path / "state"))
    assert again.returncode == 0, again.stderr
    assert "creating a private CA" not in again.stderr
