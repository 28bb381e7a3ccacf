"""Who gets a tunnel: real certificates against a running server, read after the handshake.

Every case connects to a real ``Server`` on loopback with a raw TLS client (see
``secpki.probe``) or a real ``Agent``, and checks both sides of the story: what
the client experienced, and the one line the server logged about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fluidity import cli
from fluidity.agent import Agent
from fluidity.agent.keeper import TunnelState
from fluidity.config.agent import AgentConfig, AgentTLS, AgentWebSocket
from fluidity.config.server import ClientsConfig, ServerTLS, ServerWebSocket
from fluidity.config.values import FileOrPem
from fluidity.errors import TunnelUnavailable
from fluidity.server.server import Server
from fluidity.transport.tls import agent_context, server_context
from support.harness import (
    Process,
    make_agent_config,
    make_server_config,
    server_yaml,
    start_process,
)
from support.secpki import SecurityPKI, client_context, make_security_pki, probe
from support.transfers import wait_for

WAIT = 10.0
FAILURES = "fluidity_handshake_failures_total"


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> SecurityPKI:
    return make_security_pki(tmp_path_factory.mktemp("security-pki"))


@pytest.fixture
def revoked(spki: SecurityPKI, tmp_path: Path) -> Iterator[Path]:
    """A CRL that lists bob, made by ``fluidity certs revoke`` in a copy of the CA."""
    import shutil

    copy = tmp_path / "ca"
    shutil.copytree(spki.directory, copy)
    assert cli.main(["certs", "revoke", "--dir", str(copy), "--name", "bob"]) == 0
    yield copy / "crl.pem"


@contextlib.asynccontextmanager
async def running(spki: SecurityPKI, **changes: object) -> AsyncIterator[Server]:
    server = Server(make_server_config(spki.quickstart(), **changes))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(drain_timeout=1.0)


def port(server: Server) -> int:
    assert server.address is not None
    return server.address[1]


def handshake_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fluidity.transport.tlsaccept"]


# -- the certificate matrix -------------------------------------------------------------


CASES = [
    pytest.param("alice", "alice", None, id="valid"),
    pytest.param("expired", "expired", "certificate has expired", id="expired"),
    pytest.param("future", "future", "certificate is not yet valid", id="not-yet-valid"),
    pytest.param("server", "server", "certificate purpose", id="server-cert-as-client"),
    pytest.param(None, None, "the client sent no certificate", id="no-certificate"),
]


@pytest.mark.parametrize(("cert", "key", "logged"), CASES)
async def test_a_client_certificate_gets_a_tunnel_only_if_valid(
    spki: SecurityPKI,
    caplog: pytest.LogCaptureFixture,
    cert: str | None,
    key: str | None,
    logged: str | None,
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    context = client_context(
        spki.ca, spki.cert(cert) if cert else None, spki.key(key) if key else None
    )
    async with running(spki) as server:
        seen = await probe(port(server), context)
    assert seen.handshake_done, "a TLS 1.3 client finishes its handshake before the verdict"
    if logged is None:
        assert seen.accepted, seen.detail
        assert server.acceptor.handshakes_ok == 1
        return
    assert not seen.accepted, seen.detail
    assert server.acceptor.handshakes_failed == 1
    lines = handshake_lines(caplog)
    assert len(lines) == 1 and logged in lines[0].getMessage()
    assert lines[0].exc_info is None and "\n" not in lines[0].getMessage()


async def test_a_certificate_from_another_ca_is_refused(
    spki: SecurityPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    context = client_context(spki.ca, spki.other / "mallory.crt", spki.other / "mallory.key")
    async with running(spki) as server:
        seen = await probe(port(server), context)
    assert seen.handshake_done and not seen.accepted
    (line,) = handshake_lines(caplog)
    assert "unable to get local issuer certificate" in line.getMessage()


async def test_a_revoked_certificate_is_refused_and_the_others_still_get_in(
    spki: SecurityPKI, revoked: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    tls = dataclasses.replace(_server_tls(spki), crl=FileOrPem.from_path(revoked))
    async with running(spki, tls=tls) as server:
        bob = await probe(port(server), client_context(spki.ca, spki.cert("bob"), spki.key("bob")))
        alice = await probe(
            port(server), client_context(spki.ca, spki.cert("alice"), spki.key("alice"))
        )
    assert bob.handshake_done and not bob.accepted
    assert alice.accepted, alice.detail
    (line,) = handshake_lines(caplog)
    assert "certificate revoked" in line.getMessage()


async def test_a_tls_1_2_client_is_refused_at_the_handshake_on_a_direct_only_port(
    spki: SecurityPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    context = client_context(spki.ca, spki.cert("alice"), spki.key("alice"), tls12_only=True)
    async with running(spki, websocket=ServerWebSocket(enabled=False)) as server:
        seen = await probe(port(server), context)
    assert not seen.accepted and not seen.handshake_done
    (line,) = handshake_lines(caplog)
    assert "does not speak TLS 1.3" in line.getMessage()


async def test_a_tls_1_2_client_asking_for_h2_gets_no_tunnel_where_websockets_are_accepted(
    spki: SecurityPKI, caplog: pytest.LogCaptureFixture
) -> None:
    # The WebSocket transport's outer layer may be TLS 1.2 (an inspecting proxy's), so
    # the handshake completes; the direct transport (h2) is refused right after it and
    # counted and logged as the failed handshake it is.
    caplog.set_level(logging.INFO, logger="fluidity")
    context = client_context(spki.ca, spki.cert("alice"), spki.key("alice"), tls12_only=True)
    async with running(spki) as server:
        seen = await probe(port(server), context)
    assert not seen.accepted, seen.detail
    assert server.acceptor.handshakes_failed == 1 and server.acceptor.handshakes_ok == 0
    (line,) = handshake_lines(caplog)
    assert "TLSv1.2 with h2: the direct transport requires TLS 1.3" in line.getMessage()


async def test_no_session_ticket_is_issued_so_no_handshake_skips_verification(
    spki: SecurityPKI,
) -> None:
    context = client_context(spki.ca, spki.cert("alice"), spki.key("alice"))
    async with running(spki) as server:
        seen = await probe(port(server), context)
    assert seen.accepted and not seen.session_reusable


# -- the agent's view ------------------------------------------------------------------


def agent_config(
    spki: SecurityPKI, server: Server | int, name: str, **changes: object
) -> AgentConfig:
    tls = AgentTLS(
        ca=FileOrPem.from_path(spki.ca),
        cert=FileOrPem.from_path(spki.cert(name)),
        key=FileOrPem.from_path(spki.key(name)),
    )
    server_port = server if isinstance(server, int) else port(server)
    return make_agent_config(spki.quickstart(), server_port, tls=tls, **changes)


async def agent_outcome(config: AgentConfig) -> tuple[TunnelState, str]:
    """Start an agent, wait (bounded) for its tunnel, return its state and last error."""
    agent = Agent(config)
    await agent.start()
    try:
        with contextlib.suppress(TunnelUnavailable):
            await agent.keeper.wait_ready(within=3.0)
        # A first attempt may still be under way on a busy machine: wait for its outcome.
        keeper = agent.keeper
        await wait_for(
            lambda: keeper.state is TunnelState.CONNECTED or bool(keeper.last_error), within=10
        )
        return agent.keeper.state, agent.keeper.last_error
    finally:
        await agent.shutdown(drain_timeout=0.5)


async def test_a_revoked_agent_is_told_its_certificate_was_refused(
    spki: SecurityPKI, revoked: Path
) -> None:
    tls = dataclasses.replace(_server_tls(spki), crl=FileOrPem.from_path(revoked))
    async with running(spki, tls=tls) as server:
        state, error = await agent_outcome(agent_config(spki, server, "bob"))
        good, _ = await agent_outcome(agent_config(spki, server, "alice"))
    assert state is TunnelState.AUTH_FAILED
    assert "authentication failed" in error and "bob.crt" in error
    assert good is TunnelState.CONNECTED


async def test_the_agent_refuses_a_server_whose_certificate_is_not_for_the_name_it_dialled(
    spki: SecurityPKI,
) -> None:
    async with running(spki) as server:
        state, error = await agent_outcome(
            agent_config(spki, server, "alice", server_name="tunnel.example.org")
        )
    assert state is TunnelState.CONNECTING
    assert "cannot verify the server certificate" in error and "tunnel.example.org" in error


async def test_the_agent_refuses_a_server_certificate_from_another_ca(
    spki: SecurityPKI,
) -> None:
    async with running(spki) as server:
        foreign = agent_config(spki, server, "alice")
        foreign = dataclasses.replace(
            foreign,
            tls=dataclasses.replace(foreign.tls, ca=FileOrPem.from_path(spki.other / "ca.crt")),
        )
        state, error = await agent_outcome(foreign)
    assert state is TunnelState.CONNECTING
    assert "self-signed certificate in certificate chain" in error


async def test_the_agent_refuses_a_server_that_speaks_only_tls_1_2(spki: SecurityPKI) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(spki.cert("server"), spki.key("server"))
    accepted: list[object] = []
    old = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0, ssl=context)
    try:
        old_port = old.sockets[0].getsockname()[1]
        state, error = await agent_outcome(agent_config(spki, old_port, "alice"))
    finally:
        old.close()
        for writer in accepted:
            writer.transport.abort()  # type: ignore[attr-defined]
    assert state is TunnelState.CONNECTING
    assert "during the TLS handshake" in error or "protocol version" in error
    assert accepted == [], "no TLS 1.2 session was ever established"


def test_both_contexts_are_tls_1_3_only_and_always_verify(spki: SecurityPKI) -> None:
    agent = agent_context(spki.ca, spki.cert("alice"), spki.key("alice"))
    server = server_context(spki.ca, spki.cert("server"), spki.key("server"))
    for context in (agent, server):
        assert context.minimum_version is ssl.TLSVersion.TLSv1_3
        assert context.maximum_version is ssl.TLSVersion.TLSv1_3
        assert context.verify_mode is ssl.CERT_REQUIRED
    assert agent.check_hostname
    assert server.num_tickets == 0


def test_no_config_key_can_turn_verification_off() -> None:
    keys = {f.name for cls in (AgentConfig, AgentTLS) for f in dataclasses.fields(cls)}
    words = ("verify", "insecure", "check_hostname", "skip", "tls_version", "min_version")
    assert not [key for key in keys if any(word in key for word in words)]


# -- the client identity allow-list ----------------------------------------------------


async def test_clients_allow_admits_matching_names_and_refuses_the_rest(
    spki: SecurityPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    allow = ClientsConfig(allow=("ali*", "fluidity://client/carol"))
    async with running(spki, clients=allow) as server:
        seen = {
            name: await probe(
                port(server), client_context(spki.ca, spki.cert(name), spki.key(name))
            )
            for name in ("alice", "bob", "carol")
        }
        bob_agent, error = await agent_outcome(agent_config(spki, server, "bob"))
    assert seen["alice"].accepted and seen["carol"].accepted
    assert seen["bob"].handshake_done and not seen["bob"].accepted
    assert "closed after the handshake with b''" in seen["bob"].detail
    refusals = [r.getMessage() for r in caplog.records if "refusing agent" in r.getMessage()]
    assert len(refusals) >= 2  # the probe, then each try of the agent
    assert "CN=bob" in refusals[0] and "matches no clients.allow entry" in refusals[0]
    assert bob_agent is TunnelState.AUTH_FAILED and "authentication failed" in error


async def test_clients_allow_applies_to_the_websocket_transport_too(
    spki: SecurityPKI, caplog: pytest.LogCaptureFixture
) -> None:
    # The identity is checked on the tunnel connection, after the inner mTLS handshake.
    caplog.set_level(logging.INFO, logger="fluidity")
    websocket: dict[str, object] = {"transport": "websocket", "websocket": AgentWebSocket()}
    async with running(spki, clients=ClientsConfig(allow=("ali*",))) as server:
        alice, _ = await agent_outcome(agent_config(spki, server, "alice", **websocket))
        bob, error = await agent_outcome(agent_config(spki, server, "bob", **websocket))
        tunnels = server.metrics.value("fluidity_tunnel_connections_total")
        not_allowed = server.metrics.value(FAILURES, {"reason": "certificate_not_allowed"})
    assert alice is TunnelState.CONNECTED
    assert bob is not TunnelState.CONNECTED, error
    assert tunnels == 1 and not_allowed >= 1
    refusals = [r.getMessage() for r in caplog.records if "refusing agent" in r.getMessage()]
    assert refusals and "CN=bob" in refusals[0] and "matches no clients.allow entry" in refusals[0]


async def test_clients_allow_matches_dns_names_without_regard_to_case(spki: SecurityPKI) -> None:
    async with running(spki, clients=ClientsConfig(allow=("BOB",))) as server:
        bob = await probe(port(server), client_context(spki.ca, spki.cert("bob"), spki.key("bob")))
    assert bob.accepted, "bob's certificate carries DNS:bob, matched case-insensitively"


# -- the real program, under uvloop ----------------------------------------------------


def test_the_server_program_refuses_a_revoked_client_and_logs_one_line(
    spki: SecurityPKI, revoked: Path, tmp_path: Path, processes: list[Process]
) -> None:
    config = server_yaml(spki.quickstart())
    config["tls"] = {**config["tls"], "crl": str(revoked)}  # type: ignore[dict-item]
    server = start_process("server", config, tmp_path)
    processes.append(server)
    bob = asyncio.run(
        probe(server.port, client_context(spki.ca, spki.cert("bob"), spki.key("bob")))
    )
    alice = asyncio.run(
        probe(server.port, client_context(spki.ca, spki.cert("alice"), spki.key("alice")))
    )
    assert bob.handshake_done and not bob.accepted
    assert alice.accepted
    server.popen.terminate()
    server.popen.wait(timeout=WAIT)
    log = server.log()
    assert log.count("certificate revoked") == 1
    assert "Traceback" not in log


def _server_tls(spki: SecurityPKI) -> ServerTLS:
    return ServerTLS(
        ca=FileOrPem.from_path(spki.ca),
        cert=FileOrPem.from_path(spki.cert("server")),
        key=FileOrPem.from_path(spki.key("server")),
    )


_ = subprocess  # the processes fixture owns the subprocesses
