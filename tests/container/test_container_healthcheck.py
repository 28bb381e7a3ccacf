"""deploy/container/healthcheck.py: which ``fluidity health`` the image's HEALTHCHECK runs.

The health check finds the running ``fluidity server|agent`` process in
/proc and checks the listener that process was configured with; these tests
give it a fake /proc. The health command itself is tested with the CLI, and
the HEALTHCHECK in a real container by ``.ci/container-check``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

CONTAINER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "container"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"container_{name}", CONTAINER_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = load("healthcheck")


def fake_proc(tmp_path: Path, processes: dict[str, list[str]]) -> Path:
    """A /proc with one ``PID/cmdline`` (NUL-separated) per entry, plus the usual non-PID names."""
    for pid, argv in processes.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (tmp_path / "self").mkdir()
    (tmp_path / "uptime").write_text("1.0 1.0\n")
    return tmp_path


SERVER = ["/usr/bin/python3.11", "/usr/bin/fluidity", "server", "--config", "/config/server.yaml"]


def test_finds_the_fluidity_process_running_as_pid_1(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            "1": SERVER,
            "12": ["/usr/bin/python3.11", "/usr/lib/fluidity-image/healthcheck.py"],
        },
    )

    assert healthcheck.fluidity_argv(proc) == ["server", "--config", "/config/server.yaml"]


def test_finds_it_under_an_init_and_ignores_health_processes(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            "1": ["/run/podman-init", "--", "/usr/bin/fluidity", "agent", "--config", "/c/a.yaml"],
            "2": ["/usr/bin/python3.11", "/usr/bin/fluidity", "agent", "--config", "/c/a.yaml"],
            "30": ["/usr/bin/python3.11", "/usr/bin/fluidity", "health", "--config", "/c/server"],
        },
    )

    assert healthcheck.fluidity_argv(proc) == ["agent", "--config", "/c/a.yaml"]


def test_no_fluidity_process_gives_none(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {"1": ["/usr/bin/python3.11", "-c", "pass"]})

    assert healthcheck.fluidity_argv(proc) is None


def test_health_reads_the_same_config_with_the_same_role() -> None:
    assert healthcheck.health_args(["agent", "--config", "/config/agent.yaml"]) == [
        "--role",
        "agent",
        "--config",
        "/config/agent.yaml",
    ]
    assert healthcheck.health_args(["server", "--config=/c/s.yaml"]) == [
        "--role",
        "server",
        "--config",
        "/c/s.yaml",
    ]


def test_health_without_a_config_file_uses_the_environment_alone() -> None:
    assert healthcheck.health_args(["server", "--log-level", "debug"]) == ["--role", "server"]


def test_a_listen_flag_wins_over_the_config_as_it_does_for_the_process() -> None:
    args = ["agent", "--config", "/config/agent.yaml", "--listen", "0.0.0.0:3128"]

    assert healthcheck.health_args(args) == ["--address", "0.0.0.0:3128"]
