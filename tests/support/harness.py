"""Test harness: configs, in-process and subprocess tunnels, process helpers."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from fluidity.agent import Agent
from fluidity.config.agent import AgentConfig, AgentTLS
from fluidity.config.server import ServerConfig, ServerTLS, TargetsConfig
from fluidity.config.values import Address, FileOrPem
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server

LOOPBACK = "127.0.0.1"


def make_server_config(pki: QuickstartPKI, **changes: object) -> ServerConfig:
    config = ServerConfig(
        listen=Address(LOOPBACK, 0),
        tls=ServerTLS(
            ca=FileOrPem.from_path(pki.ca_cert),
            cert=FileOrPem.from_path(pki.server_cert),
            key=FileOrPem.from_path(pki.server_key),
        ),
        targets=TargetsConfig(allow=("127.0.0.0/8",)),
        drain_timeout=5.0,
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def make_agent_config(pki: QuickstartPKI, server_port: int, **changes: object) -> AgentConfig:
    config = AgentConfig(
        listen=Address(LOOPBACK, 0),
        server=Address(LOOPBACK, server_port),
        server_name="localhost",
        tls=AgentTLS(
            ca=FileOrPem.from_path(pki.ca_cert),
            cert=FileOrPem.from_path(pki.client_cert),
            key=FileOrPem.from_path(pki.client_key),
        ),
        reconnect=dataclasses.replace(
            AgentConfig.__dataclass_fields__["reconnect"].default, initial=0.05, max=0.5
        ),  # type: ignore[arg-type]
        drain_timeout=5.0,
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


@dataclass
class Tunnel:
    """A running server and agent in this event loop."""

    server: Server
    agent: Agent

    @property
    def proxy(self) -> str:
        assert self.agent.address is not None
        return f"http://{LOOPBACK}:{self.agent.address[1]}"

    @property
    def proxy_port(self) -> int:
        assert self.agent.address is not None
        return self.agent.address[1]

    async def ready(self) -> None:
        await self.agent.keeper.wait_ready(within=10)

    async def close(self) -> None:
        await self.agent.shutdown(drain_timeout=1.0)
        await self.server.shutdown(drain_timeout=1.0)


async def start_tunnel(
    pki: QuickstartPKI,
    *,
    server_changes: dict[str, object] | None = None,
    wait_ready: bool = True,
    **agent_changes: object,
) -> Tunnel:
    """A server and an agent; ``server_changes`` go to the server config, the other
    keywords to the agent's. ``wait_ready=False`` returns before the tunnel is up."""
    server = Server(make_server_config(pki, **(server_changes or {})))
    await server.start()
    assert server.address is not None
    agent = Agent(make_agent_config(pki, server.address[1], **agent_changes))
    await agent.start()
    tunnel = Tunnel(server, agent)
    if wait_ready:
        await tunnel.ready()
    return tunnel


# -- processes ------------------------------------------------------------------------------


@dataclass
class Process:
    """A ``fluidity`` subprocess and the address it reported listening on."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def wait_for_line(self, text: str, timeout: float = 10.0) -> None:
        """Block until ``text`` shows in the log (polling a file another process writes)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log():
                return
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never appeared in the log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_process(
    role: str,
    config: dict[str, object],
    workdir: Path,
    timeout: float = 20,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> Process:
    """Run ``fluidity ROLE --config`` with ``config`` (and ``args``, and ``env`` added to
    the environment); wait for its 'listening' log line. ``prefix`` goes before the
    command (``unshare --pid --fork``: run it as PID 1)."""
    config_path = workdir / f"{role}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / f"{role}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "fluidity.cli",
                role,
                "--config",
                str(config_path),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    pattern = re.compile(r"(?:listening on|HTTP proxy on) [\d.]+:(\d+)")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        match = pattern.search(log_path.read_text(errors="replace"))
        if match:
            return Process(popen, int(match.group(1)), log_path)
        if popen.poll() is not None:
            break
        time.sleep(0.02)  # polling a log file written by another process
    popen.kill()
    raise AssertionError(f"fluidity {role} did not start:\n{log_path.read_text()}")


def server_yaml(pki: QuickstartPKI, **extra: object) -> dict[str, object]:
    return {
        "listen": f"{LOOPBACK}:0",
        "tls": {"ca": str(pki.ca_cert), "cert": str(pki.server_cert), "key": str(pki.server_key)},
        "targets": {"allow": ["127.0.0.0/8"]},
        **extra,
    }


def agent_yaml(pki: QuickstartPKI, server_port: int, **extra: object) -> dict[str, object]:
    return {
        "listen": f"{LOOPBACK}:0",
        "server": f"{LOOPBACK}:{server_port}",
        "server_name": "localhost",
        "tls": {"ca": str(pki.ca_cert), "cert": str(pki.client_cert), "key": str(pki.client_key)},
        "reconnect": {"initial": 0.05, "max": 0.5},
        **extra,
    }
