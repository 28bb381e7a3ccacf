"""The server's front door: accept TCP, run the TLS handshake, hand the connection over.

Why not ``loop.create_server(ssl=context)``? Two reasons:

* it fixes one ``SSLContext`` for the listener's whole life, and a hot reload of
  the certificate, key, CA or CRL must reach the *next* handshake without
  closing the listener or any live tunnel;
* it drops failed handshakes silently (they are ``OSError``s, which asyncio
  logs only in debug mode), so an operator would never see why a revoked or
  expired client, a TLS 1.2 client or a port scanner was turned away.

So the listener speaks plain TCP, and each accepted socket is upgraded with
``loop.start_tls`` using whatever context ``contexts()`` returns at that moment.
A failure is one log line naming the peer and the reason (rate-limited, so a
flood of garbage cannot flood the log); a success goes to ``factory()``'s
protocol exactly as ``create_server`` would have delivered it.

``start_tls`` calls the new transport's protocol as soon as the handshake ends
-- possibly with the agent's first bytes -- before the awaiting task resumes. A
``_Handover`` protocol catches those calls and replays them, in order, to the
real protocol once it is attached.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

ContextSource = Callable[[], ssl.SSLContext]
ProtocolFactory = Callable[[], asyncio.Protocol]

# Friendlier words for the OpenSSL reasons a refused handshake most often carries.
_REASONS = {
    "UNSUPPORTED_PROTOCOL": "the client does not speak TLS 1.3 (TLS 1.2 and older are refused)",
    "NO_PROTOCOLS_AVAILABLE": "the client does not speak TLS 1.3 (TLS 1.2 and older are refused)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
    "WRONG_VERSION_NUMBER": "not a TLS client (garbage or plain text)",
    "HTTP_REQUEST": "not a TLS client (a plain HTTP request)",
    "NO_SHARED_CIPHER": "no cipher in common",
}


class FailureLog:
    """Logs failed handshakes one line each, at most ``burst`` lines per ``window`` seconds.

    Beyond that the failures are only counted, and the first line of the next
    window says how many went unlogged. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        burst: int = 20,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = burst
        self._window = window
        self._clock = clock
        self._window_start = clock()
        self._logged = 0
        self.suppressed = 0

    def failed(self, peer: str, reason: str) -> None:
        """Record one failed handshake from ``peer``; log it unless over the budget."""
        now = self._clock()
        if now - self._window_start >= self._window:
            self._roll(now)
        if self._logged >= self._burst:
            self.suppressed += 1
            return
        self._logged += 1
        log.info("TLS handshake with %s failed: %s", peer, reason)

    def _roll(self, now: float) -> None:
        if self.suppressed:
            log.warning(
                "%d more failed TLS handshakes were not logged in the last %.0f s",
                self.suppressed,
                now - self._window_start,
            )
        self._window_start = now
        self._logged = 0
        self.suppressed = 0


def describe_failure(exc: BaseException, timeout: float) -> str:
    """One line saying why a handshake failed, from the exception it raised."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        return _REASONS.get(reason, reason.lower().replace("_", " ") or str(exc))
    if isinstance(exc, TimeoutError) or "taking longer" in str(exc):
        return f"no complete handshake within {timeout:g} s (limits.handshake_timeout)"
    if isinstance(exc, ConnectionError | EOFError):
        return "the client closed the connection during the handshake"
    return f"{type(exc).__name__}: {exc}"


class TLSAcceptor:
    """Upgrades accepted TCP connections to TLS with the current context.

    Pass ``accept`` to ``loop.create_server`` as the protocol factory. Counts are
    for operators and tests: ``handshakes_ok``, ``handshakes_failed``.
    """

    def __init__(
        self,
        contexts: ContextSource,
        factory: ProtocolFactory,
        handshake_timeout: float,
        failures: FailureLog | None = None,
    ) -> None:
        self._contexts = contexts
        self._factory = factory
        self._timeout = handshake_timeout
        self._failures = failures or FailureLog()
        self._pending: set[asyncio.Task[None]] = set()
        self.handshakes_ok = 0
        self.handshakes_failed = 0

    @property
    def handshakes_in_progress(self) -> int:
        return len(self._pending)

    def accept(self) -> asyncio.Protocol:
        """The protocol of one freshly accepted TCP connection."""
        return _Accepted(self)

    def cancel_pending(self) -> None:
        """Abandon every handshake in progress (shutdown)."""
        for task in list(self._pending):
            task.cancel()

    def _start(self, transport: asyncio.Transport) -> None:
        task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        peer = _peer_text(transport)
        handover = _Handover()
        loop = asyncio.get_running_loop()
        try:
            # start_tls enforces the handshake timeout itself; the outer bound is a
            # safety net in case a loop implementation does not.
            async with asyncio.timeout(self._timeout + 1.0):
                tls = await loop.start_tls(
                    transport,
                    handover,
                    self._contexts(),
                    server_side=True,
                    ssl_handshake_timeout=self._timeout,
                )
        except (OSError, TimeoutError, EOFError) as exc:
            transport.abort()
            self.handshakes_failed += 1
            self._failures.failed(peer, describe_failure(exc, self._timeout))
            return
        except asyncio.CancelledError:
            transport.abort()
            raise
        if tls is None:  # the transport closed while the handshake finished
            transport.abort()
            return
        self.handshakes_ok += 1
        handover.attach(tls, self._factory())


class _Accepted(asyncio.Protocol):
    """The plain-TCP phase: stop reading at once, so the ClientHello waits for start_tls."""

    def __init__(self, acceptor: TLSAcceptor) -> None:
        self._acceptor = acceptor

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp: asyncio.Transport = transport  # type: ignore[assignment]
        tcp.pause_reading()
        self._acceptor._start(tcp)


class _Handover(asyncio.Protocol):
    """Holds what the TLS transport reports until the real protocol is attached."""

    def __init__(self) -> None:
        self._target: asyncio.Protocol | None = None
        self._data: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None

    def attach(self, transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        """Make ``protocol`` the transport's protocol and replay what arrived before it."""
        transport.set_protocol(protocol)
        self._target = protocol
        protocol.connection_made(transport)
        for chunk in self._data:
            protocol.data_received(chunk)
        self._data.clear()
        if self._eof and not protocol.eof_received():
            transport.close()
        if self._lost is not None:
            protocol.connection_lost(self._lost[0])

    def data_received(self, data: bytes) -> None:
        if self._target is not None:
            self._target.data_received(data)
        else:
            self._data.append(data)

    def eof_received(self) -> bool:
        if self._target is not None:
            return bool(self._target.eof_received())
        self._eof = True
        return True  # keep the transport open until the real protocol decides

    def connection_lost(self, exc: Exception | None) -> None:
        if self._target is not None:
            self._target.connection_lost(exc)
        else:
            self._lost = (exc,)


def _peer_text(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if not peer:
        return "a client"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
