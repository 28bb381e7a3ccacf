"""Transfers through the agent that report how they ended, for fault tests.

Each client returns an :class:`Outcome` that separates the three ways a
transfer can end: **intact** (complete and the right bytes), an **explicit
error** the client can see (a TCP reset, a body shorter than its
``Content-Length``, an error status), and the one that must never happen, a
**silent truncation**: a message that looks complete (a clean end of a
close-delimited body or of a CONNECT stream) but lacks bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from support.harness import Process
from support.origins import CHUNK, GatedOrigin, pattern_sha256

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Outcome:
    """How one transfer ended, as its client saw it."""

    status: int
    size: int
    sha256: str
    complete: bool  # the framing said the message ended here (length reached, or clean EOF)
    error: str = ""  # what the client saw go wrong, if anything

    def intact(self, size: int) -> bool:
        return self.complete and self.size == size and self.sha256 == pattern_sha256(size)

    def silently_truncated(self, size: int) -> bool:
        """Looked complete to the client, but bytes are missing or wrong."""
        return self.complete and not self.error and not self.intact(size)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(
    reader: asyncio.StreamReader, length: int | None, started: asyncio.Event
) -> tuple[int, str, bool]:
    """Read to ``length`` or, with none, to EOF; (size, sha256, complete). Raises on reset."""
    digest = hashlib.sha256()
    size = 0
    while length is None or size < length:
        want = CHUNK if length is None else min(CHUNK, length - size)
        chunk = await reader.read(want)
        if not chunk:
            return size, digest.hexdigest(), length is None  # EOF: complete only if framed so
        digest.update(chunk)
        size += len(chunk)
        started.set()
    return size, digest.hexdigest(), True


async def _response(reader: asyncio.StreamReader, started: asyncio.Event) -> Outcome:
    status = 0
    size, sha, complete = 0, hashlib.sha256().hexdigest(), False
    try:
        status, headers = await _read_head(reader)
        length = headers.get("content-length")
        if status != 200:  # the agent's or the origin's error answer, with its reason
            reason = (await reader.read(4096)).decode(errors="replace").strip()
            return Outcome(status, 0, "", False, f"HTTP {status}: {reason}")
        size, sha, complete = await _read_body(
            reader, None if length is None else int(length), started
        )
    except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
        return Outcome(status, size, sha, False, f"{type(exc).__name__}: {exc}")
    error = "" if complete else "the body ended before its Content-Length"
    return Outcome(status, size, sha, complete, error)


async def http_request(
    proxy_port: int,
    url: str,
    method: str = "GET",
    body: bytes = b"",
    started: asyncio.Event | None = None,
) -> Outcome:
    """``method url`` through the agent as an absolute-form request; reads the answer.

    ``started`` is set once body bytes of the answer have reached this client.
    """
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, proxy_port)
    except OSError as exc:
        return Outcome(0, 0, "", False, f"cannot connect to the agent: {exc}")
    host = url.split("/")[2]
    framing = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT") else ""
    writer.write(f"{method} {url} HTTP/1.1\r\nHost: {host}\r\n{framing}\r\n".encode() + body)
    try:
        return await _response(reader, started or asyncio.Event())
    finally:
        writer.transport.abort()


async def connect_request(
    proxy_port: int, origin_port: int, path: str, started: asyncio.Event | None = None
) -> Outcome:
    """CONNECT to the origin through the agent, then ``GET path`` inside the tunnel.

    ``started`` is set once body bytes of the answer have reached this client.
    """
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, proxy_port)
    except OSError as exc:
        return Outcome(0, 0, "", False, f"cannot connect to the agent: {exc}")
    target = f"{LOOPBACK}:{origin_port}"
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    try:
        status, _ = await _read_head(reader)
        if status != 200:
            return Outcome(status, 0, "", False, f"CONNECT answered {status}")
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return await _response(reader, started or asyncio.Event())
    except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
        return Outcome(0, 0, "", False, f"{type(exc).__name__}: {exc}")
    finally:
        writer.transport.abort()


def assert_intact_or_explicit(outcome: Outcome, size: int) -> None:
    """The fault-test contract: whole and right, or an error the client saw."""
    assert not outcome.silently_truncated(size), outcome
    assert outcome.intact(size) or outcome.error, outcome


@asynccontextmanager
async def gated_origin() -> AsyncIterator[GatedOrigin]:
    origin = await GatedOrigin().start()
    try:
        yield origin
    finally:
        await origin.close()


async def wait_for(condition: Callable[[], bool], within: float) -> None:
    """Poll ``condition`` (state that callbacks or another process change) until true."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def wait_for_log(process: Process, pattern: str, within: float) -> re.Match[str]:
    """Wait until ``process``'s log matches ``pattern``; the match."""
    found: list[re.Match[str]] = []

    def seen() -> bool:
        match = re.search(pattern, process.log())
        if match:
            found.append(match)
        return match is not None

    try:
        await wait_for(seen, within)
    except TimeoutError:
        raise AssertionError(
            f"no {pattern!r} in the log within {within} s:\n{process.log()}"
        ) from None
    return found[0]


def figure(name: str, seconds: float) -> None:
    """Print a measured figure; ``pytest -rA | grep FIGURE`` collects them."""
    print(f"FIGURE {name}: {seconds:.3f} s")
