"""The server's front door: accept TCP, run the TLS handshake, hand the connection over.

Why not ``loop.create_server(ssl=context)``? Two reasons:

* it fixes one ``SSLContext`` for the listener's whole life, and a hot reload of
  the certificate, key, CA or CRL must reach the *next* handshake without
  closing the listener or any live tunnel;
* it drops failed handshakes silently (they are ``OSError``s, which asyncio
  logs only in debug mode), so an operator would never see why a revoked or
  expired client, a TLS 1.2 client or a port scanner was turned away, and the
  metrics could not count them.

So the listener accepts plain sockets itself and hands each to
``loop.connect_accepted_socket`` with whatever context ``contexts()`` returns
at that moment. That call returns only once the handshake is done (the
protocol has had ``connection_made``) and raises if it failed, so a failure
is caught in one place: it is counted under a short reason label
(``on_failure``, the server's metrics) and becomes one log line naming the
peer, the label and the reason in words -- rate-limited, so a flood of garbage
cannot flood the log -- and never a traceback. The handshake timeout closes
silent connections; each handshake is its own small task, so a slow one holds
up nobody else.

Why not ``loop.start_tls`` on an accepted plain connection (an earlier
design)? To leave the ClientHello for ``start_tls`` the plain protocol must
pause reading at once, and uvloop reads anyway: under uvloop the client's
first TLS message was lost in about one test run in two unless it was
captured and replayed by hand into the TLS layer's private buffer interface.
``connect_accepted_socket`` puts the TLS layer on the
socket before the first read, so there is no window to lose bytes in, and
the application bytes that arrive with the client's last handshake flight
(an HTTP/2 client sends its preface at once) reach the protocol in order,
under asyncio and uvloop alike.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable

from fluidity.transport.sockopts import listening_socket
from fluidity.transport.tls import handshake_failure_reason

log = logging.getLogger(__name__)

ContextSource = Callable[[], ssl.SSLContext]
# The tunnel connection is a buffered protocol (TLS decrypts into its buffer); the
# front door's hand-off and the WebSocket link are protocols of either kind.
ProtocolFactory = Callable[[], asyncio.BaseProtocol]
# Told the reason label of each failed handshake (the server's metrics counter).
FailureCallback = Callable[[str], None]

# Friendlier words for the OpenSSL reasons a refused handshake most often carries.
_REASONS = {
    "UNSUPPORTED_PROTOCOL": "the client does not speak TLS 1.3 (TLS 1.2 and older are refused)",
    "NO_PROTOCOLS_AVAILABLE": "the client does not speak TLS 1.3 (TLS 1.2 and older are refused)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
    "WRONG_VERSION_NUMBER": "not a TLS client (garbage or plain text)",
    "HTTP_REQUEST": "not a TLS client (a plain HTTP request)",
    "NO_SHARED_CIPHER": "no cipher in common",
}

# Labels of failures every public port sees all day (scanners, dropped connections):
# logged at DEBUG, so they neither crowd the INFO log nor use up its rate budget.
ROUTINE = frozenset({"not_tls", "connection_lost"})


class FailureLog:
    """Logs failed handshakes one line each, at most ``burst`` lines per ``window`` seconds.

    Certificate trouble and timeouts are logged at INFO, ``ROUTINE`` failures
    at DEBUG; a failure whose level is not enabled is neither logged nor
    counted against the budget. Beyond the budget failures are only counted,
    and the first line of the next window says how many went unlogged.
    ``clock`` is injectable for tests.
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

    def failed(self, peer: str, reason: str, detail: str) -> None:
        """Record one failed handshake from ``peer`` (``reason`` a label, ``detail`` words)."""
        level = logging.DEBUG if reason in ROUTINE else logging.INFO
        if not log.isEnabledFor(level):
            return
        now = self._clock()
        if now - self._window_start >= self._window:
            self._roll(now)
        if self._logged >= self._burst:
            self.suppressed += 1
            return
        self._logged += 1
        log.log(level, "TLS handshake from %s failed (%s): %s", peer, reason, detail)

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


def failure_reason(exc: BaseException) -> str:
    """The metrics label of a failed handshake (``tls.handshake_failure_reason``),
    with the loop's own handshake deadline read as ``timeout``."""
    if _is_loop_timeout(exc):
        return "timeout"
    return handshake_failure_reason(exc)


def describe_failure(exc: BaseException, timeout: float) -> str:
    """One line saying why a handshake failed, from the exception it raised."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        return _REASONS.get(reason, reason.lower().replace("_", " ") or str(exc))
    if isinstance(exc, TimeoutError) or _is_loop_timeout(exc):
        return f"no complete handshake within {timeout:g} s (limits.handshake_timeout)"
    if isinstance(exc, ConnectionError | EOFError):
        return "the client closed the connection during the handshake"
    return f"{type(exc).__name__}: {exc}"


def _is_loop_timeout(exc: BaseException) -> bool:
    # asyncio and uvloop end a handshake that outlives ssl_handshake_timeout with
    # ConnectionAbortedError("SSL handshake is taking longer than N seconds: ...").
    return isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc)


class TLSListener:
    """Accepts TCP connections and upgrades each to TLS with the context current then.

    ``contexts()`` is asked once per connection; ``factory()``'s protocol gets
    ``connection_made`` only after a successful handshake. Each failure calls
    ``on_failure(reason)`` and goes to ``failures``. Counts are for operators
    and tests: ``handshakes_ok``, ``handshakes_failed``.
    """

    def __init__(
        self,
        contexts: ContextSource,
        factory: ProtocolFactory,
        handshake_timeout: float,
        failures: FailureLog | None = None,
        on_failure: FailureCallback | None = None,
    ) -> None:
        self._contexts = contexts
        self._factory = factory
        self._timeout = handshake_timeout
        self._failures = failures or FailureLog()
        self._on_failure = on_failure
        self._socks: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()  # cancelled by close, not yet done
        self.handshakes_ok = 0
        self.handshakes_failed = 0
        self.address: tuple[str, int] | None = None

    @property
    def handshakes_in_progress(self) -> int:
        return len(self._pending)

    async def start(self, host: str, port: int, backlog: int = 1024) -> tuple[str, int]:
        """Listen on every address ``host`` resolves to, as ``create_server`` would (IPv6
        sockets IPv6-only); port 0 takes a free port. Return the first bound address."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, _, _, _, sockaddr in dict.fromkeys(infos):
                if self._socks and port == 0:
                    sockaddr = (sockaddr[0], self._socks[0].getsockname()[1], *sockaddr[2:])
                self._socks.append(listening_socket(family, sockaddr, backlog))
        except OSError:
            self.close()
            raise
        for sock in self._socks:
            self._accepting.append(loop.create_task(self._accept_forever(sock), name="tls-accept"))
        bound = self._socks[0].getsockname()
        self.address = (bound[0], bound[1])
        return self.address

    def close(self) -> None:
        """Stop accepting and abandon the handshakes in progress; live connections stay."""
        # One window remains: a connection the loop accepted in this very turn, its
        # task not yet resumed, is dropped by the cancellation with the socket
        # unclosed until collected (``sock_accept`` is a coroutine, its result
        # unreachable once cancelled). Only a connection racing the shutdown hits it.
        tasks = [*self._accepting, *self._pending]
        for task in tasks:
            task.cancel()
        self._closing.update(tasks)
        self._accepting.clear()
        for sock in self._socks:
            sock.close()
        self._socks.clear()

    async def wait_closed(self) -> None:
        """Wait until the tasks ``close`` cancelled have finished, so that each abandoned
        handshake has closed its socket (before the loop goes away, say)."""
        closing, self._closing = self._closing, set()
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    async def _accept_forever(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(sock)
            except OSError as exc:
                # Out of file descriptors or a connection reset while queued: the
                # listener itself is fine; breathe a moment and go on.
                log.warning("accepting a connection failed: %s", exc.strerror or exc)
                await asyncio.sleep(0.1)
                continue
            accepted = AcceptedSocket(client, self._factory)
            task = loop.create_task(self._handshake(accepted))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            # Closes the socket if the loop never took it, even for a task cancelled
            # before it ever ran (and so never reached any cleanup of its own).
            task.add_done_callback(accepted.release)

    async def _handshake(self, accepted: AcceptedSocket) -> None:
        peer = _peer_text(accepted.sock)
        loop = asyncio.get_running_loop()
        try:
            # The loop enforces the handshake timeout itself; the outer bound is a
            # safety net in case an implementation does not.
            async with asyncio.timeout(self._timeout + 1.0):
                transport, _ = await loop.connect_accepted_socket(
                    accepted.protocol,
                    accepted.sock,
                    ssl=self._contexts(),
                    ssl_handshake_timeout=self._timeout,
                )
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            self._failed(peer, exc)
            return
        if transport.is_closing():
            return  # its protocol turned it away at once, and said why (see refused)
        self.handshakes_ok += 1

    def refused(self, peer: str, reason: str, detail: str) -> None:
        """A connection its protocol turned away right after the handshake (the server's
        front door: h2 without a client certificate, or over TLS 1.2): counted and
        logged as a failed handshake with ``reason``, since to the operator it is one."""
        self.handshakes_failed += 1
        if self._on_failure is not None:
            self._on_failure(reason)
        self._failures.failed(peer, reason, detail)

    def _failed(self, peer: str, exc: BaseException) -> None:
        reason = failure_reason(exc)
        self.handshakes_failed += 1
        if self._on_failure is not None:
            self._on_failure(reason)
        self._failures.failed(peer, reason, describe_failure(exc, self._timeout))


class AcceptedSocket:
    """One accepted socket on its way to TLS, and who must close it.

    ``connect_accepted_socket`` calls the protocol factory (``protocol``) just
    before it wraps the socket in a transport; from then on the loop owns the
    socket and closes it on every path, a failed or cancelled handshake
    included (closing it here too could pull the descriptor from under a live
    TLS shutdown). Before that, nobody does: a handshake task cancelled by
    ``close()`` before its first step never even runs its ``except`` clauses.
    So ``release``, the task's done callback, closes the socket exactly when
    the loop never took it.
    """

    def __init__(self, sock: socket.socket, factory: ProtocolFactory) -> None:
        self.sock = sock
        self._factory = factory
        self.taken = False

    def protocol(self) -> asyncio.BaseProtocol:
        """The connection's protocol; the loop owns the socket from this call on."""
        self.taken = True
        return self._factory()

    def release(self, _task: asyncio.Task[None]) -> None:
        """Close the socket if the loop never took it."""
        if not self.taken:
            self.sock.close()


def _peer_text(client: socket.socket) -> str:
    try:
        peer = client.getpeername()
    except OSError:
        return "a client"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
