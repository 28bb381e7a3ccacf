"""Hot reload of the server's certificate, key, CA and CRL, with live tunnels watching.

Each test copies a CA directory, runs a real server and real agents on it,
changes the files the way an operator would (``fluidity certs ... --force``,
``fluidity certs revoke``, a botched copy), and checks three things: new
handshakes see the new material, live tunnels carry on untouched, and a bad
file keeps the old material with one error line naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from fluidity.agent import Agent
from fluidity.config.agent import AgentTLS, AgentWebSocket
from fluidity.config.server import ServerTLS
from fluidity.config.values import FileOrPem
from fluidity.errors import TunnelUnavailable
from fluidity.pki import certs, revocation
from fluidity.server.server import Server
from support.harness import (
    Process,
    make_agent_config,
    make_server_config,
    server_yaml,
    start_process,
)
from support.secpki import SecurityPKI, client_context, make_security_pki, probe

FAILURES = "fluidity_handshake_failures_total"

WAIT = 10.0


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> SecurityPKI:
    return make_security_pki(tmp_path_factory.mktemp("reload-pki"))


@pytest.fixture
def spki(base: SecurityPKI, tmp_path: Path) -> SecurityPKI:
    """A private copy of the CA directory: these tests change its files."""
    shutil.copytree(base.directory, tmp_path / "ca")
    return SecurityPKI(tmp_path / "ca", base.other)


class LogWaiter(logging.Handler):
    """Sets an event when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def server_tls(spki: SecurityPKI, **changes: object) -> ServerTLS:
    tls = ServerTLS(
        ca=FileOrPem.from_path(spki.ca),
        cert=FileOrPem.from_path(spki.cert("server")),
        key=FileOrPem.from_path(spki.key("server")),
        reload_interval=0,
    )
    return dataclasses.replace(tls, **changes)


@contextlib.asynccontextmanager
async def running(spki: SecurityPKI, **tls_changes: object) -> AsyncIterator[Server]:
    server = Server(make_server_config(spki.quickstart(), tls=server_tls(spki, **tls_changes)))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(drain_timeout=1.0)


@contextlib.asynccontextmanager
async def agent_of(
    spki: SecurityPKI, server: Server, name: str, **changes: object
) -> AsyncIterator[Agent]:
    assert server.address is not None
    tls = AgentTLS(
        ca=FileOrPem.from_path(spki.ca),
        cert=FileOrPem.from_path(spki.cert(name)),
        key=FileOrPem.from_path(spki.key(name)),
    )
    agent = Agent(make_agent_config(spki.quickstart(), server.address[1], tls=tls, **changes))
    await agent.start()
    try:
        await agent.keeper.wait_ready(within=WAIT)
        yield agent
    finally:
        await agent.shutdown(drain_timeout=0.5)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


class Stream:
    """A CONNECT tunnel through the agent to the echo server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, agent: Agent, target_port: int) -> Stream:
        assert agent.address is not None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", agent.address[1]), WAIT
        )
        authority = f"127.0.0.1:{target_port}"
        writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200"), head
        return cls(reader, writer)

    async def echoes(self, data: bytes) -> bool:
        self.writer.write(data)
        return await asyncio.wait_for(self.reader.readexactly(len(data)), WAIT) == data

    def close(self) -> None:
        self.writer.transport.abort()


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def rotate_server_certificate(spki: SecurityPKI) -> int:
    """Issue a new server certificate and key over the old ones; return its serial."""
    files = certs.issue_server(
        spki.directory, "server", dns=["localhost"], ips=["127.0.0.1"], force=True
    )
    return serial_of(files.cert)


def alice(spki: SecurityPKI) -> ssl.SSLContext:
    """Alice's client context; it trusts the CA of the module's pristine copy."""
    return client_context(
        spki.other.parent / "ca" / "ca.crt", spki.cert("alice"), spki.key("alice")
    )


# -- certificate and key -------------------------------------------------------------------


async def test_a_rotated_certificate_serves_new_handshakes_and_live_tunnels_carry_on(
    spki: SecurityPKI,
) -> None:
    old_serial = serial_of(spki.cert("server"))
    async with running(spki) as server, agent_of(spki, server, "alice") as agent:
        assert server.address is not None
        async with echo_server() as target:
            stream = await Stream.open(agent, target)
            try:
                assert await stream.echoes(b"before")
                conn = agent.keeper.connection
                new_serial = rotate_server_certificate(spki)
                assert server.tls.poll(), "the changed files are picked up"
                assert await stream.echoes(b"after the reload")
                assert agent.keeper.connection is conn and agent.keeper.reconnects == 0
            finally:
                stream.close()
        fresh = await probe(server.address[1], alice(spki))
    assert fresh.accepted and fresh.server_serial == new_serial != old_serial


async def test_the_watcher_notices_changed_files_by_itself(
    spki: SecurityPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    waiter = LogWaiter("TLS material reloaded (files changed)")
    logging.getLogger("fluidity").addHandler(waiter)
    try:
        async with running(spki, reload_interval=0.05) as server:
            assert server.address is not None
            new_serial = rotate_server_certificate(spki)
            await asyncio.wait_for(waiter.seen.wait(), WAIT)
            fresh = await probe(server.address[1], alice(spki))
    finally:
        logging.getLogger("fluidity").removeHandler(waiter)
    assert fresh.server_serial == new_serial


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        pytest.param("garbage-cert", "server.crt", id="garbage-certificate"),
        pytest.param("empty-ca", "ca.crt", id="empty-ca"),
        pytest.param("missing-key", "server.key", id="missing-key"),
        pytest.param("shared-key", "chmod 600", id="key-readable-by-others"),
        pytest.param("foreign-key", "server.key", id="key-of-another-certificate"),
    ],
)
async def test_a_broken_file_keeps_the_old_material_and_names_the_file(
    base: SecurityPKI,
    spki: SecurityPKI,
    caplog: pytest.LogCaptureFixture,
    breakage: str,
    named: str,
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    old_serial = serial_of(spki.cert("server"))
    async with running(spki) as server:
        assert server.address is not None
        break_file(spki, breakage)
        assert not server.tls.poll()
        assert not server.tls.poll(), "a broken file is reported once, not every poll"
        still = await probe(server.address[1], alice(spki))
        shutil.copy(base.ca, spki.ca)
        new_serial = rotate_server_certificate(spki)
        assert server.tls.poll(), "fixing the files is the next change"
        fixed = await probe(server.address[1], alice(spki))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and named in errors[0] and "previous certificates" in errors[0]
    assert still.accepted and still.server_serial == old_serial
    assert fixed.accepted and fixed.server_serial == new_serial


def break_file(spki: SecurityPKI, breakage: str) -> None:
    key = spki.key("server")
    match breakage:
        case "garbage-cert":
            spki.cert("server").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
        case "empty-ca":
            spki.ca.write_bytes(b"")
        case "missing-key":
            key.unlink()
        case "shared-key":
            key.chmod(0o644)
        case "foreign-key":
            shutil.copy(spki.key("alice"), key)
            key.chmod(0o600)


# -- revocation --------------------------------------------------------------------------


async def test_a_reloaded_crl_refuses_the_revoked_client_and_ends_its_live_tunnel_only(
    spki: SecurityPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    crl = revocation.refresh_crl(spki.directory)
    async with (
        running(spki, crl=FileOrPem.from_path(crl)) as server,
        agent_of(spki, server, "alice") as good,
        agent_of(spki, server, "bob") as bad,
        echo_server() as target,
    ):
        assert server.address is not None
        stream = await Stream.open(good, target)
        try:
            good_conn, bad_conn = good.keeper.connection, bad.keeper.connection
            assert good_conn is not None and bad_conn is not None
            revocation.revoke(spki.directory, "bob")
            assert server.tls.poll()
            await asyncio.wait_for(asyncio.shield(bad_conn.closed), WAIT)
            assert await stream.echoes(b"alice is still welcome")
            assert good.keeper.connection is good_conn and good_conn.is_usable
            bob = await probe(
                server.address[1], client_context(spki.ca, spki.cert("bob"), spki.key("bob"))
            )
        finally:
            stream.close()
    assert bob.handshake_done and not bob.accepted
    closing = [
        r.getMessage() for r in caplog.records if "its certificate is revoked" in r.getMessage()
    ]
    assert len(closing) == 1 and closing[0].startswith("closing the tunnel of bob@")


async def test_a_reload_reaches_the_websocket_transport_and_ends_a_revoked_tunnel_there(
    spki: SecurityPKI,
) -> None:
    # The WebSocket transport's inner mTLS uses the reloaded context too: bob's tunnel
    # over it ends when a reload revokes him, and his next attempt is refused inside.
    crl = revocation.refresh_crl(spki.directory)
    websocket = {"transport": "websocket", "websocket": AgentWebSocket()}
    async with (
        running(spki, crl=FileOrPem.from_path(crl)) as server,
        agent_of(spki, server, "alice", **websocket) as good,
        agent_of(spki, server, "bob", **websocket) as bad,
    ):
        before = server.contexts
        good_conn, bad_conn = good.keeper.connection, bad.keeper.connection
        assert good_conn is not None and bad_conn is not None
        assert bad.keeper.transport == "websocket"
        revocation.revoke(spki.directory, "bob")
        assert server.tls.poll()
        assert server.contexts.inner is not before.inner
        assert server.contexts.main is not before.main
        await asyncio.wait_for(asyncio.shield(bad_conn.closed), WAIT)
        assert good.keeper.connection is good_conn and good_conn.is_usable
        with contextlib.suppress(TunnelUnavailable):
            await bad.keeper.wait_ready(within=1.0)
        assert bad.keeper.connection is None, "a revoked client gets no new tunnel"
        refused = server.metrics.value(FAILURES, {"reason": "certificate_revoked"})
    assert refused >= 1


# -- SIGHUP, in the real program under uvloop ------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_the_certificate_in_the_running_program(
    spki: SecurityPKI, tmp_path: Path, processes: list[Process]
) -> None:
    config = server_yaml(spki.quickstart())
    config["tls"] = {**config["tls"], "reload_interval": 0}  # type: ignore[dict-item]
    server = start_process("server", config, tmp_path)
    processes.append(server)
    before = asyncio.run(probe(server.port, alice(spki)))
    new_serial = rotate_server_certificate(spki)
    os.kill(server.popen.pid, signal.SIGHUP)
    server.wait_for_line("TLS material reloaded (SIGHUP)")
    after = asyncio.run(probe(server.port, alice(spki)))
    assert before.accepted and after.accepted
    assert before.server_serial != new_serial == after.server_serial
    assert server.popen.poll() is None, "SIGHUP does not stop the server"
    assert "Traceback" not in server.log()
