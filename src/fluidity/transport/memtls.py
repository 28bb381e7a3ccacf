"""TLS over memory buffers: the inner, mutually-authenticated TLS 1.3 of the WebSocket transport.

``MemoryTLS`` is a sans-I/O TLS endpoint: an ``ssl.SSLObject`` between two
``ssl.MemoryBIO`` buffers. Ciphertext in, plaintext out; plaintext in,
ciphertext to send -- wherever the ciphertext travels (here: inside WebSocket
binary messages). It uses the very contexts the direct transport uses
(``tls.agent_context`` / ``tls.server_context``), so the handshake proves the
same things: the agent's client certificate to the server, the server's
private-CA certificate to the agent, TLS 1.3 only, ALPN ``h2``::

    tls = MemoryTLS(agent_context(...), server_side=False, server_hostname="tunnel")
    tls.start()                              # queues the ClientHello
    send(tls.ciphertext_to_send())
    plaintext = tls.receive(ciphertext)      # drives the handshake, then decrypts
    tls.send(b"...")                         # queued until the handshake is done

This is the one place the inner TLS meets ``ssl``: its errors become
``HandshakeError`` (before the handshake completes) or ``TunnelClosed``
(after: an alert from the peer, e.g. a refused client certificate in TLS 1.3).
"""

from __future__ import annotations

import ssl
from typing import Any

from fluidity.errors import HandshakeError, TunnelClosed
from fluidity.transport.tls import handshake_failure_reason

# One TLS record holds at most 16 KiB, and ``SSLObject.read`` returns at most one: a
# larger request only makes each call allocate (and, past malloc's mmap threshold,
# map and unmap) memory it gives back at once -- several times slower in bulk.
READ_SIZE = 64 * 1024


class MemoryTLS:
    """One side of a TLS connection whose records travel wherever the caller takes them."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        peer: str = "peer",
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._peer = peer
        self._pending: list[bytes] = []
        self.handshake_complete = False
        self.peer_closed = False
        """True once the peer sent close_notify: nothing more will be decrypted."""

    def start(self) -> None:
        """Begin the handshake (a client queues its ClientHello)."""
        self._step_handshake()

    def receive(self, ciphertext: bytes) -> bytes:
        """Take ciphertext from the peer; return the plaintext it completes (maybe none).

        Raises ``HandshakeError`` if the handshake fails (a certificate that does
        not verify, no common protocol) and ``TunnelClosed`` if the connection
        fails after it. Queued output (alerts included) is ready either way.
        """
        self._incoming.write(ciphertext)
        if not self.handshake_complete:
            self._step_handshake()
            if not self.handshake_complete:
                return b""
        return self._read_plaintext()

    def send(self, plaintext: bytes) -> None:
        """Encrypt ``plaintext`` (queued until the handshake completes)."""
        if not self.handshake_complete:
            self._pending.append(bytes(plaintext))
            return
        self._write(plaintext)

    def ciphertext_to_send(self) -> bytes:
        """The records to deliver to the peer now."""
        return self._outgoing.read()

    def close(self) -> None:
        """Queue a close_notify alert; nothing may be sent after it."""
        if not self.handshake_complete:
            return
        try:
            self._ssl.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass  # close_notify is queued; we do not wait for the peer's

    def getpeercert(self) -> dict[str, Any] | None:
        """The verified peer certificate (as ``ssl.SSLSocket.getpeercert``), once handshaken."""
        return self._ssl.getpeercert() if self.handshake_complete else None

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._ssl

    # -- internals --------------------------------------------------------

    def _step_handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLCertVerificationError as exc:
            raise HandshakeError(
                f"cannot verify the certificate of {self._peer}: {exc.verify_message}",
                handshake_failure_reason(exc),
            ) from exc
        except ssl.SSLError as exc:
            raise HandshakeError(
                f"TLS handshake with {self._peer} failed: {_why(exc)}",
                handshake_failure_reason(exc),
            ) from exc
        self.handshake_complete = True
        pending, self._pending = self._pending, []
        for data in pending:
            self._write(data)

    def _read_plaintext(self) -> bytes:
        chunks: list[bytes] = []
        while not self.peer_closed:
            try:
                chunk = self._ssl.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            except ssl.SSLError as exc:
                raise TunnelClosed(f"TLS connection with {self._peer} failed: {_why(exc)}") from exc
            if not chunk:
                self.peer_closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = self._ssl.write(view)
                view = view[written:]
        except ssl.SSLError as exc:
            raise TunnelClosed(f"TLS connection with {self._peer} failed: {_why(exc)}") from exc


def _why(exc: ssl.SSLError) -> str:
    """``tlsv13 alert certificate required`` rather than the whole errno tuple."""
    return str(exc.reason or exc).lower().replace("_", " ")
