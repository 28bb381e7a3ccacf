"""``fluidity doctor``: the checks in order, each printed as it completes.

For an agent config: config, key files, certificates, DNS, the corporate
proxy, the TLS handshake (naming a TLS-inspecting proxy), the server
certificate's name, the clock against the server's, and one request through
the tunnel. The network checks stop at the first that shows the server cannot
be reached, since everything after it would fail for the same reason.

For a server config: config, key files, certificates, and whether something
listens at ``listen`` (the server running).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fluidity.config.agent import AgentConfig
from fluidity.config.server import ServerConfig
from fluidity.doctor import files
from fluidity.doctor.certs import NOT_ISSUED, check_certificates
from fluidity.doctor.handshake import check_clock, check_handshake, check_server_name
from fluidity.doctor.network import check_dns, check_proxy
from fluidity.doctor.report import Finding, Level, exit_code, render_json, summary
from fluidity.doctor.tunnel import DEFAULT_TARGET, check_tunnel
from fluidity.errors import ConfigError


@dataclass(frozen=True)
class DoctorOptions:
    """``role``: None to tell it from the file; ``timeout``: seconds for each network check."""

    role: files.Role | None = None
    as_json: bool = False
    target: str = DEFAULT_TARGET
    timeout: float = 10.0


Emit = Callable[[Finding], None]


def run(path: Path, options: DoctorOptions) -> int:
    """Run the checks on the config at ``path``, print them; 1 if any found a problem."""
    found: list[Finding] = []

    def emit(finding: Finding) -> None:
        found.append(finding)
        if not options.as_json:
            print(finding.line(), flush=True)

    role = options.role
    if role is None:
        try:
            role = files.detect_role(path)
        except ConfigError as exc:
            emit(Finding.problem("config", str(exc), "give the path of agent.yaml or server.yaml"))
            role = "agent"
    if not found:
        asyncio.run(diagnose(path, role, options, emit))
    if options.as_json:
        print(render_json(role, str(path), found))
    else:
        print(summary(found))
    return exit_code(found)


async def diagnose(path: Path, role: files.Role, options: DoctorOptions, emit: Emit) -> None:
    """Every check for ``role``, in order, each finding handed to ``emit`` at once."""
    config, finding = files.load(role, path)
    emit(finding)
    if config is None:
        return
    for finding in files.key_permissions(config):
        emit(finding)
    certificates = check_certificates(config)
    for finding in certificates:
        emit(finding)
    if isinstance(config, AgentConfig):
        # our own certificate not issued by tls.ca either: tls.ca is the wrong CA, which
        # looks like TLS inspection from the handshake alone
        wrong_ca = any(f.level is Level.PROBLEM and NOT_ISSUED in f.message for f in certificates)
        await _network(config, options, emit, wrong_ca=wrong_ca)
    else:
        emit(await _listening(config, options.timeout))


async def _network(
    config: AgentConfig, options: DoctorOptions, emit: Emit, *, wrong_ca: bool
) -> None:
    timeout = options.timeout
    if config.lifecycle is not None:
        emit(
            Finding.warning(
                "server",
                f"lifecycle: the server address comes from the control plane; checking "
                f"{config.server} as configured",
                "wake the server first (fluidity cloud wake --config agent.yaml), then run again",
            )
        )
    dns = await check_dns(config, timeout)
    emit(dns)
    proxy = await check_proxy(config, timeout)
    for finding in proxy:
        emit(finding)
    if any(f.level is Level.PROBLEM for f in proxy):
        return
    handshake = await check_handshake(config, timeout, wrong_ca=wrong_ca)
    for finding in handshake.findings:
        emit(finding)
    mismatch = any("mismatch" in f.message for f in handshake.findings)
    if handshake.reached or mismatch:  # through an inspecting proxy, the name is its forgery's
        name = await check_server_name(config, timeout)
        if name is not None:
            emit(name)
    if handshake.reached or config.transport != "direct":
        emit(await check_clock(config, timeout))
        emit(await check_tunnel(config, options.target, timeout))


async def _listening(config: ServerConfig, timeout: float) -> Finding:  # noqa: ASYNC109
    """Whether a server accepts connections at ``listen`` (wildcards: on loopback)."""
    listen = config.listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen.host, listen.host)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, listen.port)
    except (OSError, TimeoutError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        return Finding.warning(
            "listen",
            f"nothing accepts connections at {host}:{listen.port} ({why})",
            "start the server: fluidity server --config <this file> (or its service)",
        )
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Finding.ok("listen", f"a server accepts connections at {host}:{listen.port}")
