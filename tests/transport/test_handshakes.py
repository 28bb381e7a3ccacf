"""Failed TLS handshakes: the server and the agent each see why, log it once and count it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fluidity.agent import Agent
from fluidity.agent.keeper import TunnelState
from fluidity.config.agent import AgentTLS
from fluidity.config.server import LimitsConfig
from fluidity.config.values import FileOrPem
from fluidity.pki import certs, revocation
from fluidity.pki.certs import QuickstartPKI, ensure_quickstart_pki
from fluidity.server.server import Server
from support.harness import LOOPBACK, make_agent_config, make_server_config

FAILURES = "fluidity_handshake_failures_total"


@pytest.fixture
async def server(pki: QuickstartPKI) -> AsyncIterator[Server]:
    s = Server(make_server_config(pki, limits=LimitsConfig(handshake_timeout=0.3)))
    await s.start()
    try:
        yield s
    finally:
        await s.shutdown(drain_timeout=1.0)


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


async def knock(
    port: int, context: ssl.SSLContext | None, send: bytes = b"", *, welcome: bool = False
) -> None:
    """Connect (with TLS if ``context``), send, and read until the server hangs up
    or, with ``welcome``, until its first byte (its HTTP/2 SETTINGS: we are in)."""
    async with asyncio.timeout(10):
        try:
            reader, writer = await asyncio.open_connection(
                LOOPBACK, port, ssl=context, server_hostname="localhost" if context else None
            )
        except (ssl.SSLError, ConnectionError):
            return
        writer.write(send)
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            first = await (reader.read(1) if welcome else reader.read())
            assert bool(first) == welcome
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


def port_of(server: Server) -> int:
    assert server.address is not None
    return server.address[1]


async def test_no_client_certificate(
    server: Server, pki: QuickstartPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="fluidity.transport.tlsaccept")
    await knock(port_of(server), client_context(pki.ca_cert), b"hello")
    assert server.metrics.value(FAILURES, {"reason": "certificate_missing"}) == 1
    assert "failed (certificate_missing)" in caplog.text


async def test_a_certificate_of_another_ca(
    server: Server, tmp_path: Path, pki: QuickstartPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="fluidity.transport.tlsaccept")
    stranger = ensure_quickstart_pki(tmp_path / "other-ca")
    context = client_context(pki.ca_cert, stranger.client_cert, stranger.client_key)
    await knock(port_of(server), context, b"hello")
    assert server.metrics.value(FAILURES, {"reason": "certificate_untrusted"}) == 1
    assert f"TLS handshake from {LOOPBACK}:" in caplog.text


async def test_a_revoked_certificate(tmp_path: Path) -> None:
    pki = ensure_quickstart_pki(tmp_path)
    certs.issue_client(tmp_path, "mallory")
    crl = revocation.revoke(tmp_path, "mallory")
    config = make_server_config(pki)
    tls = dataclasses.replace(config.tls, crl=FileOrPem.from_path(crl))
    revoking = Server(dataclasses.replace(config, tls=tls))
    await revoking.start()
    try:
        context = client_context(pki.ca_cert, tmp_path / "mallory.crt", tmp_path / "mallory.key")
        await knock(port_of(revoking), context, b"hello")
        good = client_context(pki.ca_cert, pki.client_cert, pki.client_key)
        await knock(port_of(revoking), good, welcome=True)
    finally:
        await revoking.shutdown(drain_timeout=1.0)
    assert revoking.metrics.value(FAILURES, {"reason": "certificate_revoked"}) == 1
    assert revoking.metrics.value("fluidity_tunnel_connections_total") == 1  # the good one


async def test_plain_http_and_silence(server: Server) -> None:
    await knock(port_of(server), None, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await knock(port_of(server), None)  # says nothing: the handshake deadline ends it
    assert server.metrics.value(FAILURES, {"reason": "not_tls"}) == 1
    assert server.metrics.value(FAILURES, {"reason": "timeout"}) == 1
    assert server.metrics.value("fluidity_tunnel_connections_total") == 0


def test_the_same_reasons_under_uvloop(pki: QuickstartPKI, tmp_path: Path) -> None:
    """uvloop runs TLS on its own (see tlsaccept): same verdicts, and no lost first flight.

    An earlier acceptor (start_tls on a paused plain connection) lost the
    client's ClientHello under uvloop in about one run in two; so the good
    client connects many times here, with a reload of the TLS material (a
    new context for the next handshake) between its attempts, and each one
    must be welcomed with the server's HTTP/2 SETTINGS.
    """
    uvloop = pytest.importorskip("uvloop")
    stranger = ensure_quickstart_pki(tmp_path / "other-ca")
    attempts = 12

    async def scenario() -> Server:
        server = Server(make_server_config(pki, limits=LimitsConfig(handshake_timeout=0.3)))
        await server.start()
        port = port_of(server)
        try:
            await knock(port, client_context(pki.ca_cert), b"hello")
            await knock(
                port, client_context(pki.ca_cert, stranger.client_cert, stranger.client_key)
            )
            await knock(port, None, b"GET / HTTP/1.1\r\n\r\n")
            await knock(port, None)
            good = client_context(pki.ca_cert, pki.client_cert, pki.client_key)
            for attempt in range(attempts):
                await knock(port, good, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", welcome=True)
                if attempt % 3 == 2:
                    assert server.reload("test")
        finally:
            await server.shutdown(drain_timeout=1.0)
        return server

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        server = runner.run(scenario())
    for reason in ("certificate_missing", "certificate_untrusted", "not_tls", "timeout"):
        assert server.metrics.value(FAILURES, {"reason": reason}) == 1, reason
    assert server.metrics.value("fluidity_tunnel_connections_total") == attempts
    assert server.acceptor.handshakes_ok == attempts
    assert server.acceptor.handshakes_failed == 4


# -- the agent's side ------------------------------------------------------------------------


async def test_agent_counts_a_refused_certificate_and_says_auth_failed(
    server: Server, pki: QuickstartPKI, tmp_path: Path
) -> None:
    stranger = ensure_quickstart_pki(tmp_path / "other-ca")
    config = make_agent_config(pki, port_of(server))
    tls = AgentTLS(
        ca=FileOrPem.from_path(pki.ca_cert),
        cert=FileOrPem.from_path(stranger.client_cert),
        key=FileOrPem.from_path(stranger.client_key),
    )
    agent = Agent(dataclasses.replace(config, tls=tls))
    async with asyncio.timeout(10):
        await agent.keeper.connect_once()
    assert agent.keeper.state is TunnelState.AUTH_FAILED
    assert agent.metrics.value(FAILURES, {"reason": "certificate_refused"}) == 1
    assert "refusing our client certificate" in agent.keeper.last_error


async def test_agent_counts_an_unverifiable_server_and_a_closed_port(
    server: Server, pki: QuickstartPKI
) -> None:
    wrong_name = Agent(make_agent_config(pki, port_of(server), server_name="wrong.example"))
    closed = await asyncio.start_server(lambda r, w: None, LOOPBACK, 0)
    dead_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    nobody = Agent(make_agent_config(pki, dead_port))
    async with asyncio.timeout(10):
        await wrong_name.keeper.connect_once()
        await nobody.keeper.connect_once()
    assert wrong_name.metrics.value(FAILURES, {"reason": "certificate_untrusted"}) == 1
    assert "cannot verify the server certificate" in wrong_name.keeper.last_error
    assert nobody.metrics.value(FAILURES, {"reason": "connect_failed"}) == 1
    assert nobody.keeper.state is TunnelState.CONNECTING
