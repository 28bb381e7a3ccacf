"""The agent's reload on SIGHUP: upstream proxy, direct list and credentials change, the
tunnel stays; ``server``/``tls`` changes wait for a restart; a broken file changes nothing.

A real server and a real agent made from a real ``agent.yaml``; the test rewrites the
file and calls ``reload_agent`` as the SIGHUP handler does, and once sends a real SIGHUP
to a real agent process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from fluidity.agent import Agent
from fluidity.agent.reload import reload_agent
from fluidity.config.agent import load_agent_config
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from support.harness import (
    LOOPBACK,
    Process,
    agent_yaml,
    make_server_config,
    server_yaml,
    start_process,
)
from support.origins import RecordingOrigin

WAIT = 10.0


@dataclass
class Setup:
    server: Server
    agent: Agent
    path: Path
    base: dict[str, object]

    def write(self, **changes: object) -> None:
        self.path.write_text(yaml.safe_dump({**self.base, **changes}))

    def reload(self) -> bool:
        return reload_agent(self.agent, lambda: load_agent_config(self.path, env={}))

    @property
    def proxy(self) -> str:
        assert self.agent.address is not None
        return f"http://{LOOPBACK}:{self.agent.address[1]}"


@pytest.fixture
async def setup(pki: QuickstartPKI, tmp_path: Path) -> AsyncIterator[Setup]:
    server = Server(make_server_config(pki))
    await server.start()
    assert server.address is not None
    path = tmp_path / "agent.yaml"
    base = agent_yaml(pki, server.address[1])
    path.write_text(yaml.safe_dump(base))
    agent = Agent(load_agent_config(path, env={}))
    await agent.start()
    try:
        await agent.keeper.wait_ready(within=WAIT)
        yield Setup(server, agent, path, base)
    finally:
        await agent.shutdown(drain_timeout=0.5)
        await server.shutdown(drain_timeout=0.5)


async def get(proxy: str, url: str, auth: tuple[str, str] | None = None) -> httpx.Response:
    mounted = httpx.Proxy(proxy, auth=auth) if auth else proxy
    async with httpx.AsyncClient(proxy=mounted, trust_env=False, timeout=WAIT) as client:
        return await client.get(url)


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


async def test_a_new_direct_list_routes_new_requests_and_keeps_the_tunnel(
    setup: Setup, origin: RecordingOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    conn = setup.agent.keeper.connection
    assert (await get(setup.proxy, origin.url)).status_code == 200
    through_tunnel = setup.server.streams.requested
    assert through_tunnel == 1
    setup.write(direct=["127.0.0.1"])
    assert setup.reload()
    assert (await get(setup.proxy, origin.url)).status_code == 200
    assert setup.server.streams.requested == through_tunnel, "it went direct"
    pac = await get(setup.proxy, f"{setup.proxy}/proxy.pac")
    assert "127.0.0.1" in pac.text
    assert setup.agent.keeper.connection is conn and setup.agent.keeper.reconnects == 0
    assert "config reloaded (SIGHUP): changed direct" in messages(caplog)


async def test_new_credentials_apply_to_new_clients(setup: Setup, origin: RecordingOrigin) -> None:
    conn = setup.agent.keeper.connection
    setup.write(auth={"username": "me", "password": "s3cret"})
    assert setup.reload()
    assert (await get(setup.proxy, origin.url)).status_code == 407
    assert (await get(setup.proxy, origin.url, ("me", "wrong"))).status_code == 407
    assert (await get(setup.proxy, origin.url, ("me", "s3cret"))).status_code == 200
    assert setup.agent.keeper.connection is conn


@dataclass
class ConnectRelay:
    """A minimal corporate proxy: CONNECT host:port, 200, then bytes both ways."""

    targets: list[str] = field(default_factory=list)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split()[1].decode()
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self.writers.add(up_writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


async def test_a_new_upstream_proxy_carries_the_next_tunnel_and_not_the_current_one(
    setup: Setup, origin: RecordingOrigin
) -> None:
    relay = ConnectRelay()
    port = await relay.start()
    try:
        conn = setup.agent.keeper.connection
        assert conn is not None
        setup.write(upstream_proxy={"url": f"http://{LOOPBACK}:{port}"})
        assert setup.reload()
        assert (await get(setup.proxy, origin.url)).status_code == 200
        assert setup.agent.keeper.connection is conn and relay.targets == []
        conn.close_now("test: the network changed")
        await setup.agent.keeper.wait_ready(within=WAIT)
        assert setup.server.address is not None
        assert relay.targets == [f"{LOOPBACK}:{setup.server.address[1]}"]
        assert (await get(setup.proxy, origin.url)).status_code == 200
    finally:
        relay.close()


async def test_a_change_of_server_or_tls_is_named_and_waits_for_a_restart(
    setup: Setup, pki: QuickstartPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    conn = setup.agent.keeper.connection
    running = setup.agent.config.server
    tls = {"ca": str(pki.ca_cert), "cert": str(pki.server_cert), "key": str(pki.server_key)}
    setup.write(server=f"{LOOPBACK}:1", tls=tls, direct=["example.test"])
    assert setup.reload()
    assert setup.agent.config.server == running and setup.agent.config.direct == ("example.test",)
    assert setup.agent.keeper.connection is conn
    (warning,) = [m for m in messages(caplog, logging.WARNING) if "needs a restart" in m]
    assert warning.startswith("config reload (SIGHUP): server, tls.cert, tls.key changed")


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        pytest.param({"direct": ["10.0.0.0/33"]}, "direct[0]", id="bad-direct-entry"),
        pytest.param({"auth": {"username": "me"}}, "auth", id="auth-without-password"),
        pytest.param(
            {"upstream_proxy": {"url": "http://p:1", "username": "u", "password_env": "NO_SUCH"}},
            "upstream_proxy.password_env",
            id="unset-password-variable",
        ),
        pytest.param({"reconect": {}}, "reconect", id="unknown-key"),
    ],
)
async def test_a_config_that_does_not_validate_keeps_the_old_one_and_names_the_key(
    setup: Setup,
    origin: RecordingOrigin,
    caplog: pytest.LogCaptureFixture,
    changes: dict[str, object],
    key: str,
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    before = setup.agent.config
    setup.write(**changes)
    assert not setup.reload()
    assert setup.agent.config is before
    assert (await get(setup.proxy, origin.url)).status_code == 200
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1 and key in errors[0], errors
    assert errors[0].startswith("config reload (SIGHUP) failed, still using the previous config")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_the_running_agent_without_a_reconnect(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process]
) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "agent").mkdir()
    server = start_process("server", server_yaml(pki), tmp_path / "server")
    processes.append(server)
    config = agent_yaml(pki, server.port)
    agent = start_process("agent", config, tmp_path / "agent")
    processes.append(agent)
    agent.wait_for_line("tunnel up")
    (tmp_path / "agent" / "agent.yaml").write_text(
        yaml.safe_dump({**config, "direct": ["intranet.example"]})
    )
    os.kill(agent.popen.pid, signal.SIGHUP)
    agent.wait_for_line("config reloaded (SIGHUP): changed direct")
    pac = httpx.get(f"http://{LOOPBACK}:{agent.port}/proxy.pac", timeout=WAIT, trust_env=False)
    assert "intranet.example" in pac.text
    assert agent.popen.poll() is None
    assert agent.log().count("tunnel up") == 1, "no reconnect"
    assert "agent disconnected" not in server.log()
