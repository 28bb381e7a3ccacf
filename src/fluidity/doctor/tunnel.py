"""The end-to-end check: one request through a real tunnel to a test target.

The doctor starts the agent in-process, as ``fluidity agent`` would with this
config, but listening on a free loopback port (so a running agent is left
alone), without client credentials, metrics listener or cloud wake-up, and
sends one request through it: ``GET`` for an ``http://`` target, ``CONNECT`` for
an ``https://`` one (the tunnel to it is the proof; no TLS to the target). What
the agent answers on failure (a 502 naming the reason, a 403 from the server's
policy) is what the user's browser would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import urllib.parse

from fluidity.agent import Agent
from fluidity.config.agent import AgentConfig
from fluidity.config.values import Address
from fluidity.doctor.report import Finding
from fluidity.errors import FluidityError

DEFAULT_TARGET = "https://example.com/"


async def check_tunnel(config: AgentConfig, target: str, timeout: float) -> Finding:  # noqa: ASYNC109
    """Start the agent, wait (bounded) for its tunnel, send one request to ``target``."""
    local = dataclasses.replace(
        config, listen=Address("127.0.0.1", 0), auth=None, metrics=None, lifecycle=None
    )
    try:
        agent = Agent(local)
        await agent.start()
    except FluidityError as exc:
        return Finding.problem("tunnel", f"the agent cannot start: {exc}", "see the message")
    try:
        return await _through(agent, target, timeout)
    finally:
        await agent.shutdown(drain_timeout=1.0)


async def _through(agent: Agent, target: str, timeout: float) -> Finding:  # noqa: ASYNC109
    try:
        await agent.keeper.wait_ready(within=timeout)
    except FluidityError as exc:
        return Finding.problem("tunnel", str(exc), "see the tls handshake line above")
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            status, detail = await _request(agent, target)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return Finding.problem(
            "tunnel", f"no answer to {target} through the tunnel: {why}", "check the server's log"
        )
    took = (time.monotonic() - started) * 1000
    method = "CONNECT" if target.startswith("https://") else "GET"
    said = f"{method} {target} through the tunnel: {status} ({took:.0f} ms)"
    code = int(status.split()[0]) if status.split() and status.split()[0].isdigit() else 0
    if 200 <= code < 400:
        return Finding.ok("tunnel", said)
    if code == 403:
        return Finding.problem(
            "tunnel",
            f"{said}: {detail}",
            "the server's targets policy refuses it: allow it in server.yaml (targets:), "
            "or try another --target",
        )
    return Finding.problem("tunnel", f"{said}: {detail}", "see the reason; check the target")


async def _request(agent: Agent, target: str) -> tuple[str, str]:
    """Status (``200 OK``) and the first line of the body of one proxied request."""
    assert agent.address is not None
    url = urllib.parse.urlsplit(target)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise OSError(f"--target must be an http:// or https:// URL, not {target!r}")
    port = url.port or (443 if url.scheme == "https" else 80)
    authority = f"{url.hostname}:{port}"
    if url.scheme == "https":
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
    else:
        request = f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection(*agent.address)
    try:
        writer.write(request.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        body = b"" if url.scheme == "https" and b" 200" in head[:16] else await reader.read(4096)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")[2].strip()
    detail = body.decode("utf-8", "replace").strip().splitlines()
    return status, detail[0] if detail else ""
