"""``fluidity quickstart``: a private CA, a server and an agent on this machine.

Certificates live in a state directory (``./.fluidity`` by default) and are
reused on later runs. The server listens on a free loopback port and may reach
loopback targets, so local services can be tried through the tunnel; the
agent listens where asked (``127.0.0.1:8080`` by default).

With ``--self-test`` a built-in loopback origin serves one page, which is
fetched through agent and server, printed, and checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from fluidity.agent import Agent
from fluidity.config.agent import AgentConfig, AgentTLS
from fluidity.config.server import ServerConfig, ServerTLS, TargetsConfig
from fluidity.config.values import Address, FileOrPem
from fluidity.errors import FluidityError
from fluidity.observe import progress
from fluidity.pki.certs import QuickstartPKI, ensure_quickstart_pki
from fluidity.server.server import Server

log = logging.getLogger("fluidity.quickstart")

SELF_TEST_MARKER = b"Hello from the Fluidity self-test origin"


def configs(state_dir: Path, listen: Address) -> tuple[ServerConfig, AgentConfig]:
    """Server and agent configs for one machine, from the state directory's certificates."""
    pki = _certificates(state_dir)
    server = ServerConfig(
        listen=Address("127.0.0.1", 0),
        tls=ServerTLS(
            ca=FileOrPem.from_path(pki.ca_cert),
            cert=FileOrPem.from_path(pki.server_cert),
            key=FileOrPem.from_path(pki.server_key),
        ),
        targets=TargetsConfig(allow=("127.0.0.0/8", "::1")),
        drain_timeout=2.0,
    )
    agent = AgentConfig(
        listen=listen,
        server=Address("127.0.0.1", 0),  # replaced by the bound port
        server_name="localhost",
        tls=AgentTLS(
            ca=FileOrPem.from_path(pki.ca_cert),
            cert=FileOrPem.from_path(pki.client_cert),
            key=FileOrPem.from_path(pki.client_key),
        ),
        drain_timeout=2.0,
    )
    return server, agent


def _certificates(state_dir: Path) -> QuickstartPKI:
    """The quickstart PKI, saying so while it is being made (reuse is silent)."""
    fresh = not (state_dir / "ca.key").exists()
    if fresh:
        progress.report(f"creating a private CA and certificates in {state_dir}…")
    started = time.monotonic()
    pki = ensure_quickstart_pki(state_dir)
    if fresh:
        progress.report(f"certificates ready after {time.monotonic() - started:.2f} s")
    return pki


async def run(state_dir: Path, listen: str, *, self_test: bool, stop: asyncio.Event) -> int:
    """Run server and agent until ``stop``; with ``self_test``, check one fetch and exit."""
    server_config, agent_config = configs(state_dir, Address.parse(listen))
    server = Server(server_config)
    await server.start()
    assert server.address is not None
    agent_config = _with_server(agent_config, Address("127.0.0.1", server.address[1]))
    if self_test:
        agent_config = _with_listen(agent_config, Address("127.0.0.1", 0))
    agent = Agent(agent_config)
    try:
        await agent.start()
        assert agent.address is not None
        proxy = f"http://{agent.address[0]}:{agent.address[1]}"
        if self_test:
            return await _self_test(agent, proxy)
        print(f"Fluidity is running. Certificates: {state_dir}")
        print(f"  HTTP proxy:  {proxy}")
        print(f"  try:         curl -x {proxy} http://example.com/")
        print("  (this quickstart server may also reach services on this machine)")
        print("Press Ctrl-C to stop.", flush=True)
        await stop.wait()
        return 0
    finally:
        await agent.shutdown(drain_timeout=1.0)
        await server.shutdown(drain_timeout=1.0)


async def _self_test(agent: Agent, proxy: str) -> int:
    origin = await asyncio.start_server(_serve_page, "127.0.0.1", 0)
    port = origin.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    try:
        print(f"self-test: GET {url} through {proxy} ...", flush=True)
        await agent.keeper.wait_ready(within=10)
        status, body = await _fetch(agent, url)
    except (OSError, TimeoutError, FluidityError) as exc:
        print(f"self-test FAILED: {exc}")
        return 1
    finally:
        origin.close()
    print(f"self-test: {status}")
    print(body.decode(errors="replace").rstrip())
    if status.startswith("HTTP/1.1 200") and SELF_TEST_MARKER in body:
        print("self-test passed: the page came through the mutually-authenticated tunnel")
        return 0
    print("self-test FAILED: unexpected answer")
    return 1


async def _fetch(agent: Agent, url: str) -> tuple[str, bytes]:
    assert agent.address is not None
    async with asyncio.timeout(15):
        reader, writer = await asyncio.open_connection(*agent.address)
        host = url.split("/")[2]
        writer.write(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = await reader.read()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(errors="replace"), body


async def _serve_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(10):
            await reader.readuntil(b"\r\n\r\n")
        body = SELF_TEST_MARKER + b"\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _with_server(config: AgentConfig, server: Address) -> AgentConfig:
    import dataclasses

    return dataclasses.replace(config, server=server)


def _with_listen(config: AgentConfig, listen: Address) -> AgentConfig:
    import dataclasses

    return dataclasses.replace(config, listen=listen)
