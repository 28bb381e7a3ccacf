"""``fluidity service``: what ``--dry-run`` prints, the refusals, and, where a user
systemd runs, a real installation whose agent carries a request."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from fluidity.service.render import UNIT_NAME
from support.harness import agent_yaml, make_server_config
from support.origins import RecordingOrigin

TIMEOUT = 60


def fluidity(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "fluidity", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )


def config_file(tmp_path: Path, pki: QuickstartPKI, server_port: int = 9, **extra: object) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_yaml(pki, server_port, **extra)))
    return path


def test_dry_run_prints_the_unit_and_the_exact_commands(tmp_path: Path, pki: QuickstartPKI) -> None:
    config = config_file(tmp_path, pki)
    done = fluidity(tmp_path, "service", "install", "--config", str(config), "--dry-run",
                    "--platform", "linux")  # fmt: skip
    assert done.returncode == 0, done.stderr
    unit = tmp_path / ".config/systemd/user" / UNIT_NAME
    lines = done.stdout.splitlines()
    assert lines[0] == f"would write {unit} (mode 0644):"
    assert f"    ExecStart={sys.executable} -m fluidity agent --config {config}" in lines
    assert lines[-2:] == [
        "would run: systemctl --user daemon-reload",
        f"would run: systemctl --user enable --now {UNIT_NAME}",
    ]
    assert not unit.exists()  # a dry run changes nothing


def test_dry_run_of_uninstall_and_status(tmp_path: Path) -> None:
    done = fluidity(tmp_path, "service", "uninstall", "--dry-run", "--platform", "linux")
    unit = tmp_path / ".config/systemd/user" / UNIT_NAME
    assert done.stdout.splitlines() == [
        f"would run: systemctl --user disable --now {UNIT_NAME}",
        "would run: systemctl --user daemon-reload",
        f"would remove {unit}",
    ]
    done = fluidity(tmp_path, "service", "status", "--dry-run", "--platform", "linux")
    assert done.stdout == f"would run: systemctl --user status --no-pager {UNIT_NAME}\n"


def test_dry_run_for_macos_and_windows(tmp_path: Path, pki: QuickstartPKI) -> None:
    config = str(config_file(tmp_path, pki))
    mac = fluidity(tmp_path, "service", "install", "--config", config, "--dry-run",
                   "--platform", "macos")  # fmt: skip
    assert "    \t<key>KeepAlive</key>" in mac.stdout.splitlines()
    assert f"would run: launchctl bootstrap gui/{os.getuid()} " in mac.stdout
    win = fluidity(tmp_path, "service", "install", "--config", config, "--dry-run",
                   "--platform", "windows")  # fmt: skip
    assert "<LogonTrigger>" in win.stdout
    assert 'would run: schtasks /Create /TN "Fluidity Agent" /XML ' in win.stdout


def test_another_platform_only_with_dry_run(tmp_path: Path, pki: QuickstartPKI) -> None:
    done = fluidity(tmp_path, "service", "install", "--config", str(config_file(tmp_path, pki)),
                    "--platform", "windows")  # fmt: skip
    assert done.returncode == 2
    assert "only for --dry-run" in done.stderr


def test_install_needs_a_valid_config(tmp_path: Path) -> None:
    done = fluidity(tmp_path, "service", "install", "--dry-run")
    assert done.returncode == 2 and "needs --config agent.yaml" in done.stderr
    broken = tmp_path / "agent.yaml"
    broken.write_text("server: 127.0.0.1:1\n")  # no tls: section
    done = fluidity(tmp_path, "service", "install", "--config", str(broken))
    assert done.returncode == 2 and "tls" in done.stderr
    assert not (tmp_path / ".config").exists()


def user_systemd_problem() -> str | None:
    """Why no user systemd can run a unit here, or None if one can."""
    if sys.platform != "linux" or shutil.which("systemctl") is None:
        return "not a Linux with systemctl"
    done = subprocess.run(
        ["systemctl", "--user", "is-system-running"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    state = done.stdout.strip()
    if state in ("running", "degraded"):
        return None
    why = (done.stderr or state).strip().splitlines()
    said = why[0] if why else "no answer"
    return f"no user systemd here (systemctl --user is-system-running: {said}); CI has none"


@pytest.mark.skipif(user_systemd_problem() is None, reason="a user systemd runs here")
def test_without_a_user_systemd_install_writes_the_unit_then_says_systemctl_failed(
    tmp_path: Path, pki: QuickstartPKI
) -> None:
    done = fluidity(tmp_path, "service", "install", "--config", str(config_file(tmp_path, pki)))
    assert done.returncode == 1
    assert (tmp_path / ".config/systemd/user" / UNIT_NAME).is_file()
    assert "$ systemctl --user daemon-reload" in done.stdout
    assert "systemctl --user daemon-reload failed" in done.stderr


async def test_a_real_user_service_carries_a_request(
    tmp_path: Path, pki: QuickstartPKI, origin: RecordingOrigin
) -> None:
    problem = user_systemd_problem()
    if problem is not None:
        pytest.skip(problem)
    server = Server(make_server_config(pki))
    await server.start()
    assert server.address is not None
    port = free_port()
    config = config_file(tmp_path, pki, server.address[1], listen=f"127.0.0.1:{port}")
    home = Path.home()  # the user manager reads the real ~/.config/systemd/user
    try:
        done = await asyncio.to_thread(
            fluidity, home, "service", "install", "--config", str(config)
        )
        assert done.returncode == 0, done.stdout + done.stderr
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}", timeout=10) as client:
            response = await fetch_when_up(client, f"{origin.url}/via-systemd")
        assert response.status_code == 200
        status = await asyncio.to_thread(fluidity, home, "service", "status")
        assert status.returncode == 0, status.stdout
    finally:
        await asyncio.to_thread(fluidity, home, "service", "uninstall")
        await server.shutdown(drain_timeout=1.0)
    assert not (home / ".config/systemd/user" / UNIT_NAME).exists()


async def fetch_when_up(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """The agent starts in the background: try for up to 20 s (bounded)."""
    for _ in range(100):
        try:
            return await client.get(url)
        except httpx.TransportError:
            await asyncio.sleep(0.2)  # polling another process's start; no event to wait on
    raise AssertionError("the service's agent never answered")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
