"""Reload of the policy in server.yaml (targets, clients.allow, limits) with live tunnels.

Each test runs a real server made from a real ``server.yaml`` and real agents, keeps
streams open through them to echo servers, rewrites the YAML as an operator would and
reloads (``Server.reload``, what SIGHUP calls; the file watcher; and once a real
process with a real SIGHUP). Checked every time: the tunnel stays, new streams meet
the new policy, and only what the config asks for is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from fluidity.agent import Agent
from fluidity.config.server import load_server_config
from fluidity.server.policyreload import ConfigFile
from fluidity.server.server import Server
from support.harness import (
    Process,
    agent_yaml,
    make_agent_config,
    server_yaml,
    start_process,
)
from support.secpki import SecurityPKI, make_security_pki

WAIT = 10.0


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> SecurityPKI:
    return make_security_pki(tmp_path_factory.mktemp("policy-reload-pki"))


class ConfigOnDisk:
    """A server.yaml the test rewrites; ``source`` reloads it as the CLI does."""

    def __init__(self, spki: SecurityPKI, path: Path, **extra: object) -> None:
        self.path = path
        self.base = server_yaml(spki.quickstart(), **extra)
        self.base["tls"] = {**self.base["tls"], "reload_interval": 0}  # type: ignore[dict-item]
        self.write()

    def write(self, **changes: object) -> None:
        self.path.write_text(yaml.safe_dump({**self.base, **changes}))

    @property
    def source(self) -> ConfigFile:
        return ConfigFile(self.path, lambda: load_server_config(self.path))


@contextlib.asynccontextmanager
async def running(config: ConfigOnDisk) -> AsyncIterator[Server]:
    server = Server(load_server_config(config.path), config.source)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(drain_timeout=1.0)


@contextlib.asynccontextmanager
async def agent_of(spki: SecurityPKI, server: Server, name: str = "alice") -> AsyncIterator[Agent]:
    assert server.address is not None
    agent = Agent(make_agent_config(spki.quickstart(name), server.address[1]))
    await agent.start()
    try:
        await agent.keeper.wait_ready(within=WAIT)
        yield agent
    finally:
        await agent.shutdown(drain_timeout=0.5)


@contextlib.asynccontextmanager
async def echo_servers(count: int) -> AsyncIterator[list[int]]:
    writers: set[asyncio.StreamWriter] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
        writer.close()

    servers = [await asyncio.start_server(echo, "127.0.0.1", 0) for _ in range(count)]
    try:
        yield [s.sockets[0].getsockname()[1] for s in servers]
    finally:
        for s in servers:
            s.close()
        for writer in writers:
            writer.transport.abort()


async def connect(proxy_port: int, target_port: int) -> tuple[bytes, Stream | None]:
    """CONNECT through the agent at ``proxy_port``; the status line, and the stream if 200."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy_port), WAIT)
    authority = f"127.0.0.1:{target_port}"
    writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.1 200"):
        writer.transport.abort()
        return status, None
    return status, Stream(reader, writer)


class Stream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def echoes(self, data: bytes) -> bool:
        self.writer.write(data)
        return await asyncio.wait_for(self.reader.readexactly(len(data)), WAIT) == data

    async def ended(self) -> bool:
        """True once the stream is cut: EOF or a reset, where an echo was due."""
        with contextlib.suppress(ConnectionError):
            self.writer.write(b"still there?")
        try:
            data = await asyncio.wait_for(self.reader.read(100), WAIT)
        except ConnectionError:
            return True
        return data == b""

    def close(self) -> None:
        self.writer.transport.abort()


async def open_stream(agent: Agent, target: int) -> Stream:
    assert agent.address is not None
    status, stream = await connect(agent.address[1], target)
    assert stream is not None, status
    return stream


async def status_of(agent: Agent, target: int) -> bytes:
    assert agent.address is not None
    status, stream = await connect(agent.address[1], target)
    if stream is not None:
        stream.close()
    return status


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


# -- targets ---------------------------------------------------------------------------------


async def test_a_new_deny_refuses_new_streams_and_leaves_the_open_one_and_the_tunnel(
    spki: SecurityPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    config = ConfigOnDisk(spki, tmp_path / "server.yaml")
    async with (
        echo_servers(2) as (a, b),
        running(config) as server,
        agent_of(spki, server) as agent,
    ):
        stream = await open_stream(agent, a)
        try:
            conn = agent.keeper.connection
            config.write(targets={"allow": ["127.0.0.0/8"], "deny": [f"127.0.0.1:{a}"]})
            assert server.reload("SIGHUP")
            assert await stream.echoes(b"the open stream carries on")
            assert (await status_of(agent, a)).startswith(b"HTTP/1.1 403")
            assert (await status_of(agent, b)).startswith(b"HTTP/1.1 200")
            assert agent.keeper.connection is conn and agent.keeper.reconnects == 0
            assert server.config.targets.deny == (f"127.0.0.1:{a}",)
        finally:
            stream.close()
    assert "config reloaded (SIGHUP): changed targets" in messages(caplog)


async def test_apply_to_open_closes_the_refused_open_stream_and_only_it(
    spki: SecurityPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    config = ConfigOnDisk(spki, tmp_path / "server.yaml")
    async with (
        echo_servers(2) as (a, b),
        running(config) as server,
        agent_of(spki, server) as agent,
    ):
        refused, kept = await open_stream(agent, a), await open_stream(agent, b)
        try:
            conn = agent.keeper.connection
            targets = {"allow": ["127.0.0.0/8"], "deny": [f"127.0.0.1:{a}"], "apply_to_open": True}
            config.write(targets=targets)
            assert server.reload("SIGHUP")
            assert await refused.ended()
            assert await kept.echoes(b"the allowed stream carries on")
            assert agent.keeper.connection is conn and conn is not None and conn.is_usable
        finally:
            refused.close()
            kept.close()
    closing = [m for m in messages(caplog) if "targets.apply_to_open" in m]
    assert len(closing) == 1 and f"127.0.0.1:{a}" in closing[0]


async def test_apply_to_open_judges_the_address_dialled_too(
    spki: SecurityPKI, tmp_path: Path
) -> None:
    # The deny entry is a network, the open stream named an address inside it.
    config = ConfigOnDisk(spki, tmp_path / "server.yaml")
    async with echo_servers(1) as (a,), running(config) as server, agent_of(spki, server) as agent:
        stream = await open_stream(agent, a)
        try:
            config.write(targets={"allow": ["127.0.0.0/8"], "ports": [1], "apply_to_open": True})
            assert server.reload("SIGHUP")
            assert await stream.ended(), "its port is no longer in targets.ports"
        finally:
            stream.close()


# -- broken configs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        pytest.param(
            {"targets": {"allow": ["foo:bar"], "deny": ["127.0.0.0/8"]}},
            "targets.allow[0]",
            id="bad-target",
        ),
        pytest.param({"limits": {"max_tunnels": 0}}, "limits.max_tunnels", id="out-of-bounds"),
        pytest.param(
            {"targets": {"alow": ["x"], "deny": ["127.0.0.0/8"]}}, "targets.alow", id="unknown-key"
        ),
        pytest.param({"clients": {"allow": ["al ice"]}}, "clients.allow", id="bad-pattern"),
    ],
)
async def test_a_config_that_does_not_validate_keeps_the_old_one_and_names_the_key(
    spki: SecurityPKI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    changes: dict[str, object],
    key: str,
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    config = ConfigOnDisk(spki, tmp_path / "server.yaml")
    async with echo_servers(1) as (a,), running(config) as server, agent_of(spki, server) as agent:
        before = server.config
        # The new deny would refuse ``a``, but the file has a broken key besides.
        targets = {"allow": ["127.0.0.0/8"], "deny": [f"127.0.0.1:{a}"]}
        config.write(**{"targets": targets, **changes})
        assert not server.reload("SIGHUP")
        assert server.config is before
        assert (await status_of(agent, a)).startswith(b"HTTP/1.1 200"), "the old policy stays"
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert "config reload (SIGHUP) failed, still using the previous config" in errors[0]
    assert key in errors[0] and str(config.path) in errors[0]


async def test_a_key_that_needs_a_restart_is_named_and_keeps_its_running_value(
    spki: SecurityPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    config = ConfigOnDisk(spki, tmp_path / "server.yaml")
    async with running(config) as server:
        config.write(keepalive_interval=3, limits={"handshake_timeout": 3, "max_tunnels": 7})
        assert server.reload("SIGHUP")
        assert server.config.keepalive_interval == 15.0
        assert server.config.limits.handshake_timeout == 10.0
        assert server.config.limits.max_tunnels == 7
    warnings = [m for m in messages(caplog, logging.WARNING) if "needs a restart" in m]
    assert len(warnings) == 1
    assert "keepalive_interval, limits.handshake_timeout changed" in warnings[0]


# -- clients.allow ---------------------------------------------------------------------------


async def test_a_client_taken_off_clients_allow_loses_its_tunnel_and_the_others_keep_theirs(
    spki: SecurityPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    config = ConfigOnDisk(spki, tmp_path / "server.yaml", clients={"allow": ["alice", "bob"]})
    async with (
        echo_servers(1) as (a,),
        running(config) as server,
        agent_of(spki, server, "alice") as alice,
        agent_of(spki, server, "bob") as bob,
    ):
        stream = await open_stream(alice, a)
        try:
            alice_conn, bob_conn = alice.keeper.connection, bob.keeper.connection
            assert alice_conn is not None and bob_conn is not None
            config.write(clients={"allow": ["alice"]})
            assert server.reload("SIGHUP")
            await asyncio.wait_for(asyncio.shield(bob_conn.closed), WAIT)
            assert await stream.echoes(b"alice carries on")
            assert alice.keeper.connection is alice_conn and alice_conn.is_usable
        finally:
            stream.close()
    closing = [m for m in messages(caplog, logging.WARNING) if m.startswith("closing the tunnel")]
    assert len(closing) == 1 and closing[0].startswith("closing the tunnel of bob@")


# -- triggers: the file watcher, and SIGHUP in the real program ------------------------------


async def test_the_watcher_reloads_a_changed_config_file(
    spki: SecurityPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    config = ConfigOnDisk(spki, tmp_path / "server.yaml")
    config.base["tls"] = {**config.base["tls"], "reload_interval": 0.05}  # type: ignore[dict-item]
    config.write()
    async with running(config) as server:
        config.write(limits={"max_tunnels": 3})
        async with asyncio.timeout(WAIT):
            while server.config.limits.max_tunnels != 3:  # noqa: ASYNC110 -- the watcher's poll
                await asyncio.sleep(0.02)
    assert "config reloaded (file changed): changed limits.max_tunnels" in messages(caplog)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_the_policy_of_the_running_programs(
    spki: SecurityPKI, tmp_path: Path, processes: list[Process]
) -> None:
    pki = spki.quickstart()
    server_dir, agent_dir = tmp_path / "server", tmp_path / "agent"
    server_dir.mkdir()
    agent_dir.mkdir()
    base = server_yaml(pki)
    base["tls"] = {**base["tls"], "reload_interval": 0}  # type: ignore[dict-item]
    server = start_process("server", base, server_dir)
    processes.append(server)
    agent = start_process("agent", agent_yaml(pki, server.port), agent_dir)
    processes.append(agent)

    async def scenario() -> None:
        async with echo_servers(2) as (a, b):
            _, stream = await connect(agent.port, a)
            assert stream is not None
            try:
                targets = {"allow": ["127.0.0.0/8"], "deny": [f"127.0.0.1:{a}"]}
                (server_dir / "server.yaml").write_text(
                    yaml.safe_dump({**base, "targets": targets})
                )
                os.kill(server.popen.pid, signal.SIGHUP)
                await asyncio.to_thread(server.wait_for_line, "config reloaded (SIGHUP)")
                assert await stream.echoes(b"open streams carry on")
                refused, none = await connect(agent.port, a)
                allowed, other = await connect(agent.port, b)
                assert refused.startswith(b"HTTP/1.1 403") and none is None
                assert allowed.startswith(b"HTTP/1.1 200") and other is not None
                other.close()
            finally:
                stream.close()

    asyncio.run(scenario())
    assert server.popen.poll() is None and agent.popen.poll() is None
    assert "agent disconnected" not in server.log(), "the tunnel stayed up"
    assert "Traceback" not in server.log()
