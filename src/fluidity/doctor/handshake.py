"""The TLS handshake to the server, the name on its certificate, and its clock.

The handshake is the agent's own: ``DirectRoute`` (the path through the proxy,
TLS 1.3 with our client certificate, and on a failed verification the probe that
names a TLS-inspecting proxy's issuer), then the server's first HTTP/2 word,
which tells a refused client certificate apart from a handshake that worked.

The server's clock is read from the ``Date`` header it sends on its HTTP/1.1
(WebSocket) side, which shares the port: a request for a path that is no
WebSocket endpoint is answered 404 with the date. The certificate the network
presents is read too, so the doctor can name what it is valid for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import functools
import ssl
import time
from dataclasses import dataclass

from cryptography import x509

from fluidity.agent.path import Streams, open_path
from fluidity.agent.routes import DirectRoute, presented_certificate
from fluidity.config.agent import AgentConfig
from fluidity.config.values import FileOrPem
from fluidity.doctor.certs import name_finding
from fluidity.doctor.report import Finding, Level
from fluidity.errors import (
    CertificateError,
    ConfigError,
    FluidityError,
    HandshakeError,
    PathError,
    TLSInspectionDetected,
    TunnelClosed,
)
from fluidity.protocol.tunnel import Side
from fluidity.transport.connection import TunnelConnection
from fluidity.transport.tls import agent_context

SKEW_WARNING = 30.0  # seconds
# Certificates are backdated 5 minutes (fluidity.pki.certs), and AWS refuses signed
# requests (the lifecycle's) 5 minutes off: past that, things break.
SKEW_PROBLEM = 300.0
DOCTOR_PATH = "/.well-known/fluidity-doctor"


@dataclass(frozen=True)
class HandshakeResult:
    """The findings, and whether the server was reached with a working handshake."""

    findings: list[Finding]
    reached: bool


async def check_handshake(
    config: AgentConfig,
    timeout: float,  # noqa: ASYNC109
    *,
    wrong_ca: bool = False,
) -> HandshakeResult:
    """The agent's direct-transport handshake with the server, judged; ``wrong_ca``:
    tls.cert is not issued by tls.ca either (so a foreign issuer means a wrong tls.ca)."""
    try:
        # the key as inline PEM: its file's mode is the key file line's business, and the
        # handshake can still tell what else is wrong
        key = FileOrPem.from_pem(config.tls.key.read_bytes(), source="tls.key")
        context = agent_context(config.tls.ca, config.tls.cert, key)
        ca_pem = config.tls.ca.read_bytes()
    except (CertificateError, ConfigError) as exc:
        fix = "see the certificates lines above"
        return HandshakeResult([Finding.problem("tls handshake", str(exc), fix)], False)
    connector = functools.partial(open_path, config.upstream_proxy)
    host, port, name = config.server.host, config.server.port, config.server_hostname
    route = DirectRoute(host, port, name, context, ca_pem, connector)
    result = await _handshake(config, route, timeout, wrong_ca=wrong_ca)
    if config.transport == "direct" or result.reached:
        return result
    # The agent may still get through on its WebSocket transport: the tunnel check
    # below decides, so a failed direct handshake is only a warning here.
    return HandshakeResult([_as_warning(f, config) for f in result.findings], False)


def _as_warning(finding: Finding, config: AgentConfig) -> Finding:
    if finding.level is not Level.PROBLEM:
        return finding
    return Finding.warning(
        finding.check,
        f"{finding.message} (on the direct transport; transport: {config.transport})",
        f"if the tunnel line below fails too: {finding.fix}",
    )


async def _handshake(
    config: AgentConfig,
    route: DirectRoute,
    timeout: float,  # noqa: ASYNC109
    *,
    wrong_ca: bool,
) -> HandshakeResult:
    where = f"{route.host}:{route.port}"
    name = route.server_name
    try:
        async with asyncio.timeout(timeout + 0.5):
            conn = await route.open(_factory(where), budget=timeout)
            await _first_word(conn, timeout)
    except TLSInspectionDetected as exc:
        if wrong_ca:
            return HandshakeResult([_wrong_ca(exc)], False)
        return HandshakeResult([_inspected(config, exc)], False)
    except HandshakeError as exc:
        return HandshakeResult([_failed(config, exc)], False)
    except PathError as exc:
        return HandshakeResult([_unreachable(config, str(exc))], False)
    except TimeoutError:
        return HandshakeResult([_unreachable(config, f"no answer within {timeout:g} s")], False)
    await conn.finish("doctor done")
    return HandshakeResult(
        [
            Finding.ok(
                "tls handshake", f"TLS 1.3 with {where} as {name}, client certificate accepted"
            )
        ],
        True,
    )


def _factory(where: str) -> functools.partial[TunnelConnection]:
    return functools.partial(TunnelConnection, Side.AGENT, peer_name=f"server {where}")


async def _first_word(conn: TunnelConnection, timeout: float) -> None:  # noqa: ASYNC109
    """The server's HTTP/2 preface; a close instead means it refused our certificate."""
    try:
        async with asyncio.timeout(timeout):
            await conn.ready
    except TunnelClosed as exc:
        raise HandshakeError(
            f"the server closed the connection right after the handshake: it refuses our "
            f"client certificate ({exc})",
            "certificate_refused",
        ) from exc
    except BaseException:
        conn.close_now("doctor gave up")
        raise


def _inspected(config: AgentConfig, exc: TLSInspectionDetected) -> Finding:
    message = (
        f"a TLS-inspecting proxy answers for {exc.server}: "
        f"its certificate is issued by {exc.issuer}"
    )
    if config.transport == "direct":
        return Finding.problem(
            "tls handshake",
            message,
            "set transport: websocket (or auto) in agent.yaml, and websocket.outer_ca to the "
            "proxy's CA if the system does not trust it (docs/websocket-transport.md)",
        )
    return Finding.warning(
        "tls handshake",
        f"{message}; transport: {config.transport} carries the tunnel through it in a WebSocket",
        "none if the tunnel request below works; else ask for an exception for this server",
    )


def _wrong_ca(exc: TLSInspectionDetected) -> Finding:
    return Finding.problem(
        "tls handshake",
        f"the certificate for {exc.server} is issued by {exc.issuer}, not by tls.ca, and "
        "neither is tls.cert: tls.ca is not the CA of this setup",
        "set tls.ca to the ca.crt of the CA directory that issued the server's and the "
        "agent's certificates",
    )


def _failed(config: AgentConfig, exc: HandshakeError) -> Finding:
    name = config.server_hostname
    text = str(exc)
    if exc.reason == "certificate_refused" or exc.reason == "peer_alert":
        fix = (
            "issue a client certificate from the server's CA (fluidity certs client "
            "--dir CA_DIR --name NAME), and check it is not revoked nor left out by clients.allow"
        )
    elif "Hostname mismatch" in text or "IP address mismatch" in text:
        fix = f"set server_name to a name in the server certificate, or reissue it for {name}"
    elif exc.reason == "certificate_untrusted":
        fix = "set tls.ca to the CA that issued the server's certificate (the server's tls.ca)"
    elif exc.reason == "certificate_expired":
        fix = (
            "renew the server certificate (fluidity certs server --dir CA_DIR --name NAME "
            "--force), then reload the server"
        )
    else:
        fix = f"check that {config.server} is a Fluidity server (and its port)"
    return Finding.problem("tls handshake", text, fix)


def _unreachable(config: AgentConfig, why: str) -> Finding:
    why = why.removeprefix(f"cannot connect to {config.server}: ")
    return Finding.problem(
        "tls handshake",
        f"cannot reach the server {config.server}: {why}",
        "start the server (fluidity server --config server.yaml) and check the server "
        "address in agent.yaml and that its port is open on the way",
    )


async def check_server_name(config: AgentConfig, timeout: float) -> Finding | None:  # noqa: ASYNC109
    """The name check on the certificate the server presents (None if none was read)."""
    certificate = await _presented(config, timeout)
    if certificate is None:
        return None
    return name_finding(certificate, config.server_hostname)


async def _presented(config: AgentConfig, timeout: float) -> x509.Certificate | None:  # noqa: ASYNC109
    connector = functools.partial(open_path, config.upstream_proxy)
    return await presented_certificate(
        connector,
        config.server.host,
        config.server.port,
        config.server_hostname,
        alpn="h2",
        budget=timeout,
    )


async def check_clock(config: AgentConfig, timeout: float) -> Finding:  # noqa: ASYNC109
    """This machine's clock against the server's ``Date`` header."""
    try:
        async with asyncio.timeout(timeout):
            skew = await _server_skew(config, timeout)
    except (OSError, ssl.SSLError, TimeoutError, FluidityError, ValueError) as exc:
        return Finding.warning(
            "clock",
            f"could not read the server's clock: {exc or type(exc).__name__}",
            "compare this machine's clock with the server's by hand (date -u) if TLS fails",
        )
    return judge_skew(skew)


def judge_skew(skew: float | None) -> Finding:
    """The verdict on a measured skew (seconds the server is ahead; None: unknown)."""
    if skew is None:
        return Finding.warning(
            "clock",
            "the server sends no Date header here (its WebSocket transport is off?): skew unknown",
            "compare this machine's clock with the server's by hand (date -u) if TLS fails",
        )
    direction = "behind" if skew > 0 else "ahead of"
    shown = f"this machine's clock is {abs(skew):.0f} s {direction} the server's"
    if abs(skew) >= SKEW_PROBLEM:
        return Finding.problem("clock", shown, "set the clock right (enable NTP sync)")
    if abs(skew) >= SKEW_WARNING:
        return Finding.warning("clock", shown, "enable NTP time sync on both machines")
    if abs(skew) < 2:  # the Date header counts whole seconds
        return Finding.ok("clock", "this machine's clock agrees with the server's (within 2 s)")
    return Finding.ok("clock", f"{shown} (under {SKEW_WARNING:g} s)")


async def _server_skew(config: AgentConfig, timeout: float) -> float | None:  # noqa: ASYNC109
    """Seconds the server's clock is ahead of ours (1 s resolution); None without a Date."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # reads a date only; the handshake check verifies
    context.set_alpn_protocols(["http/1.1"])
    config.tls.cert.read_bytes()  # fails early, as a ConfigError, if it cannot be read
    streams: Streams = await open_path(
        config.upstream_proxy, config.server.host, config.server.port, timeout=timeout
    )
    reader, writer = streams
    try:
        await writer.start_tls(context, server_hostname=config.server_hostname)
        host = config.server_hostname
        sent = time.time()
        writer.write(
            f"GET {DOCTOR_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        received = time.time()
    finally:
        writer.close()
    date = _date_header(head)
    if date is None:
        return None
    return date.timestamp() - (sent + received) / 2


def _date_header(head: bytes) -> dt.datetime | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "date":
            return email.utils.parsedate_to_datetime(value.strip())
    return None
