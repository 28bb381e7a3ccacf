"""Keeps the agent's one tunnel connection up, forever.

The keeper connects at start, and whenever the connection is lost -- server
restart, network reset, a middlebox killing an idle connection, a laptop
waking from sleep (caught by the keepalive PING) -- it reconnects with
exponential backoff and full jitter, logging each attempt and its reason.

A connection counts as up only once the server has spoken HTTP/2 to us: with
TLS 1.3 the client finishes its handshake before the server has checked the
client certificate, so a refused certificate shows up as the connection
ending before the first byte. That case is reported as an authentication
failure naming our certificate.

Client requests wait for the tunnel (``connect_wait``) instead of failing
the moment it blinks.

The TCP path to the server comes from a connector (by default
:func:`fluidity.path.open_path` without a proxy; the agent passes its
``upstream_proxy:``), called afresh for every attempt so a PAC file is
evaluated again on each reconnect; TLS then runs over that path.
``handshake_timeout`` bounds the whole of it: the proxy's CONNECT exchange
included.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Awaitable
from enum import Enum
from typing import Protocol

from fluidity.connection import StreamHandler, TunnelConnection, TunnelStream
from fluidity.errors import (
    AuthenticationError,
    HandshakeError,
    PathError,
    StreamError,
    TunnelClosed,
    TunnelError,
    TunnelUnavailable,
    UpstreamProxyError,
)
from fluidity.metrics import Metrics
from fluidity.path import Streams, attach_tls, open_path
from fluidity.protocol.retry import Backoff
from fluidity.protocol.tunnel import Side
from fluidity.tls import handshake_failure_reason

log = logging.getLogger(__name__)


class Connector(Protocol):
    """Opens the TCP path to the server within ``timeout`` seconds: directly, or
    through a corporate proxy. Raises PathError (see :func:`fluidity.path.open_path`)."""

    def __call__(self, host: str, port: int, *, timeout: float) -> Awaitable[Streams]: ...


class TunnelState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    AUTH_FAILED = "auth failed"
    STOPPED = "stopped"


class TunnelKeeper:
    """Owns the agent's tunnel connection and hands it to client sessions."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        server_name: str,
        context: ssl.SSLContext,
        cert_description: str,
        keepalive_interval: float = 15.0,
        keepalive_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        connect_wait: float = 10.0,
        backoff: Backoff | None = None,
        connector: Connector | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.server_name = server_name
        self._context = context
        self._cert_description = cert_description
        self._keepalive = (keepalive_interval, keepalive_timeout)
        self._handshake_timeout = handshake_timeout
        self.connect_wait = connect_wait
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._connector = connector or functools.partial(open_path, None)
        self._conn: TunnelConnection | None = None
        self._up = asyncio.Event()
        self.state = TunnelState.CONNECTING
        self.last_error = ""
        self.reconnects = 0
        self.connected_since: float | None = None
        self.metrics = metrics or Metrics("agent")
        # Payload bytes of the connections that are gone, so totals survive reconnects.
        self.closed_bytes_in = 0
        self.closed_bytes_out = 0
        self._started: float | None = None  # loop time of run(); None once the tunnel was up

    @property
    def bytes_in(self) -> int:
        """Stream payload bytes received over every connection since the keeper started."""
        conn = self._conn
        return self.closed_bytes_in + (conn.bytes_in if conn is not None else 0)

    @property
    def bytes_out(self) -> int:
        """Stream payload bytes sent over every connection since the keeper started."""
        conn = self._conn
        return self.closed_bytes_out + (conn.bytes_out if conn is not None else 0)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connection(self) -> TunnelConnection | None:
        return self._conn

    async def run(self) -> None:
        """Connect, and reconnect after every loss, until cancelled."""
        self._started = asyncio.get_running_loop().time()
        log.info("waiting for the tunnel to server %s…", self.address)
        try:
            while True:
                await self.connect_once()
                delay = self._backoff.next_delay()
                log.warning(
                    "tunnel to %s: %s; reconnecting in %.1f s (attempt %d)",
                    self.address,
                    self.last_error,
                    delay,
                    self._backoff.attempts,
                )
                await asyncio.sleep(delay)
                self.reconnects += 1
                self.metrics.reconnecting()
        finally:
            self.state = TunnelState.STOPPED
            self._up.clear()
            if self._conn is not None:
                # GOAWAY, then wait (bounded) for the TLS close to complete: the
                # agent's shutdown leaves no socket open behind it.
                await self._conn.finish("agent stopping")

    async def wait_ready(self, within: float) -> TunnelConnection:
        """The usable connection, waiting up to ``within`` seconds for one."""
        try:
            async with asyncio.timeout(within):
                while True:
                    conn = self._conn
                    if conn is not None and conn.is_usable and self._up.is_set():
                        return conn
                    self._up.clear()
                    await self._up.wait()
        except TimeoutError:
            why = f": {self.last_error}" if self.last_error else ""
            raise TunnelUnavailable(
                f"no tunnel to {self.address} after waiting {within:g} s{why}"
            ) from None

    async def open_stream(self, authority: str, handler: StreamHandler) -> TunnelStream:
        """A stream to ``authority``; waits for the tunnel, retries a refused or lost open.

        A stream refused with REFUSED_STREAM (the server is draining) or lost
        with its connection before the server answered never reached a target,
        so trying it again on the next connection is safe.
        """
        deadline = asyncio.get_running_loop().time() + self.connect_wait
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            conn = await self.wait_ready(max(remaining, 0.0))
            try:
                return await conn.open_stream(authority, handler)
            except (TunnelClosed, StreamError) as exc:
                if type(exc) is not TunnelClosed and "draining" not in str(exc):
                    raise
                conn.goaway_received = True  # stop using it for new streams
                self._up.clear()
                if asyncio.get_running_loop().time() >= deadline:
                    raise TunnelUnavailable(f"tunnel to {self.address} unavailable: {exc}") from exc

    async def connect_once(self) -> None:
        """One attempt: connect, then carry the connection until it is lost.

        Returns when the attempt failed (``last_error`` says why, and the failure
        is counted by reason) or the connection ended; ``run`` calls it in a loop.
        """
        self.state = TunnelState.CONNECTING
        try:
            conn = await self._establish()
        except TunnelError as exc:
            self.last_error = str(exc)
            self.metrics.handshake_failed(_failure_reason(exc))
            if isinstance(exc, AuthenticationError):
                self.state = TunnelState.AUTH_FAILED
                log.error("%s", exc)
            return
        self._conn = conn
        self.state = TunnelState.CONNECTED
        self.connected_since = time.time()
        self.last_error = ""
        self._backoff.reset()
        self.metrics.connection_made()
        self._up.set()
        self._report_up()
        reason = await asyncio.shield(conn.closed)
        self._up.clear()
        self.closed_bytes_in += conn.bytes_in
        self.closed_bytes_out += conn.bytes_out
        self._conn = None
        self.connected_since = None
        self.last_error = f"connection lost ({reason})"

    def _report_up(self) -> None:
        """'tunnel up after 0.4 s' the first time, for the person waiting at start."""
        if self._started is None:
            log.info("tunnel up: connected to %s", self.address)
            return
        waited = asyncio.get_running_loop().time() - self._started
        self._started = None
        log.info("tunnel up after %.1f s: connected to %s", waited, self.address)

    async def _establish(self) -> TunnelConnection:
        interval, timeout = self._keepalive
        conn = TunnelConnection(
            Side.AGENT,
            keepalive_interval=interval,
            keepalive_timeout=timeout,
            peer_name=f"server {self.address}",
        )
        # The connector and the TLS handshake share one budget; each bounds itself so
        # its failure names what it waited for. The outer timeout is a safety net.
        budget = self._handshake_timeout
        deadline = asyncio.get_running_loop().time() + budget
        try:
            async with asyncio.timeout(budget + 0.5):
                streams = await self._connector(self.host, self.port, timeout=budget)
                remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
                await attach_tls(
                    streams,
                    conn,
                    self._context,
                    server_hostname=self.server_name,
                    timeout=remaining,
                )
        except PathError:
            raise  # names the proxy or the address already
        except ssl.SSLCertVerificationError as exc:
            raise HandshakeError(
                f"cannot verify the server certificate of {self.address} "
                f"(as {self.server_name}): {exc.verify_message}",
                handshake_failure_reason(exc),
            ) from exc
        except ssl.SSLError as exc:
            raise HandshakeError(
                f"TLS with {self.address} failed: {exc}", handshake_failure_reason(exc)
            ) from exc
        except (ConnectionError, OSError) as exc:
            raise HandshakeError(
                f"cannot connect to {self.address}: {_why(exc)}", "connect_failed"
            ) from exc
        except TimeoutError as exc:
            raise HandshakeError(
                f"connecting to {self.address} timed out after {budget:g} s",
                "timeout",
            ) from exc
        try:
            return await self._await_first_word(conn)
        except asyncio.CancelledError:
            conn.close_now("agent stopping")  # not ours yet: run()'s cleanup cannot see it
            raise

    async def _await_first_word(self, conn: TunnelConnection) -> TunnelConnection:
        try:
            async with asyncio.timeout(self._handshake_timeout):
                await conn.ready
        except TunnelClosed as exc:
            raise AuthenticationError(
                f"authentication failed: the server {self.address} closed the connection "
                f"right after the TLS handshake, refusing our client certificate "
                f"{self._cert_description} (revoked, expired, not issued by its CA, "
                f"or not on its allow-list?): {exc}"
            ) from exc
        except TimeoutError as exc:
            conn.close_now("no HTTP/2 preface")
            raise HandshakeError(
                f"server {self.address} did not speak HTTP/2 in time", "no_http2"
            ) from exc
        return conn


def _failure_reason(exc: TunnelError) -> str:
    """The metrics label of a failed connection attempt."""
    if isinstance(exc, HandshakeError):
        return exc.reason
    if isinstance(exc, UpstreamProxyError):
        return "upstream_proxy"
    if isinstance(exc, PathError):
        return "timeout" if exc.status == 504 else "connect_failed"
    return "tls_error"


def _why(exc: OSError) -> str:
    """An OSError as words, even when it carries none (a reset mid-handshake)."""
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError) and not str(exc):
        return (
            "the server closed the connection during the TLS handshake "
            "(is it a fluidity server speaking TLS 1.3?)"
        )
    return str(exc) or type(exc).__name__
