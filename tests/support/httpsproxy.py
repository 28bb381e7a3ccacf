"""Helpers for the HTTPS proxy tests: a server with ``https_proxy`` on, client TLS contexts,
real programs run without blocking the loop, and a CA with good, unlisted and revoked clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fluidity.config.httpsproxy import HttpsProxyAuth, HttpsProxyConfig
from fluidity.config.server import ClientsConfig, ServerConfig, ServerTLS
from fluidity.config.values import FileOrPem
from fluidity.pki import certs
from fluidity.pki.certs import QuickstartPKI
from fluidity.pki.revocation import revoke
from fluidity.server.server import Server
from support.harness import make_server_config

LOOPBACK = "127.0.0.1"
WAIT = 10.0
USER = "ci"
PASSWORD = "s3cret-Pa55word"


@dataclass(frozen=True)
class ProxyPKI:
    """A CA with a server certificate and clients: ``alice`` (allowed), ``bob`` (not on
    the allow-list of ``proxy_config``'s callers that set one), ``carol`` (revoked),
    and the CRL that revokes carol."""

    directory: Path
    crl: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def quickstart(self) -> QuickstartPKI:
        return QuickstartPKI(
            self.ca, self.cert("server"), self.key("server"), self.cert("alice"), self.key("alice")
        )


def make_proxy_pki(root: Path) -> ProxyPKI:
    directory = root / "ca"
    certs.init_ca(directory)
    certs.issue_server(directory, "server", dns=["localhost"], ips=[LOOPBACK])
    for name in ("alice", "bob", "carol"):
        certs.issue_client(directory, name)
    return ProxyPKI(directory, revoke(directory, "carol"))


def proxy_config(
    pki: ProxyPKI,
    *,
    auth: HttpsProxyAuth | None = None,
    allow: Sequence[str] = (),
    targets: Sequence[str] = (f"{LOOPBACK}/32",),
    websocket: bool = True,
) -> ServerConfig:
    """A server config with the HTTPS proxy on (and Basic ``auth`` instead of a certificate
    when given), the CRL, ``clients.allow`` and the loopback exemption of ``targets``."""
    base = make_server_config(pki.quickstart())
    return make_server_config(
        pki.quickstart(),
        tls=ServerTLS(
            ca=base.tls.ca, cert=base.tls.cert, key=base.tls.key, crl=FileOrPem.from_path(pki.crl)
        ),
        https_proxy=HttpsProxyConfig(enabled=True, require_certificate=auth is None, auth=auth),
        clients=ClientsConfig(allow=tuple(allow)),
        targets=type(base.targets)(allow=tuple(targets)),
        websocket=type(base.websocket)(enabled=websocket),
    )


@contextlib.asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[Server]:
    server = Server(config)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(drain_timeout=1.0)


def proxy_url(server: Server, userinfo: str = "") -> str:
    assert server.address is not None
    at = f"{userinfo}@" if userinfo else ""
    return f"https://{at}{LOOPBACK}:{server.address[1]}"


def client_context(pki: ProxyPKI, name: str | None = "alice") -> ssl.SSLContext:
    """What a client of the proxy holds: the CA, and ``name``'s certificate if given."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if name is not None:
        context.load_cert_chain(pki.cert(name), pki.key(name))
    return context


def curl_args(server: Server, pki: ProxyPKI, name: str | None = "alice") -> list[str]:
    """curl's options to use the server as its HTTPS proxy, as ``name``."""
    args = ["curl", "-sS", "--max-time", str(WAIT), "--proxy", proxy_url(server)]
    args += ["--proxy-cacert", str(pki.ca)]
    if name is not None:
        args += ["--proxy-cert", str(pki.cert(name)), "--proxy-key", str(pki.key(name))]
    return args


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: bytes
    stderr: bytes


async def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109 -- a bound on a child process
) -> Ran:
    """Run a program to its end without blocking the loop (the server runs in it)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # No proxy exemption from the environment: loopback must go through the proxy.
        env={**os.environ, "no_proxy": "", "NO_PROXY": "", **(env or {})},
        cwd=cwd,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Ran(proc.returncode, out, err)


async def raw_exchange(
    server: Server,
    context: ssl.SSLContext,
    request: bytes,
    *,
    until: bytes = b"\r\n\r\n",
    times: int = 1,
) -> bytes:
    """Send ``request`` on a fresh TLS connection to the proxy and read until ``until``
    was seen ``times`` times (or the end); b"" if the server closed without a byte."""
    assert server.address is not None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(LOOPBACK, server.address[1], ssl=context, server_hostname=LOOPBACK),
        WAIT,
    )
    try:
        writer.write(request)
        data = b""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            async with asyncio.timeout(WAIT):
                while data.count(until) < times:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    data += chunk
        return data
    finally:
        writer.transport.abort()
