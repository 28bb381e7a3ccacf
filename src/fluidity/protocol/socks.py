"""The agent's SOCKS5 side, sans-I/O: RFC 1928 ``CONNECT``, RFC 1929 username/password.

The agent's port speaks HTTP and SOCKS5 at once; the first byte tells them apart
(:func:`is_socks5`: SOCKS5 opens with its version byte ``0x05``, HTTP with an ASCII
letter). A :class:`SocksSession` takes the client's bytes and answers with the same
events as the HTTP core: :class:`OpenUpstream` once the client has named its target,
:class:`SendClient` for bytes to write back, :class:`SendUpstream` and
:class:`EndUpstream` for the relay, and :class:`CloseClient` to end the client
connection. The driver reports the tunnel stream's fate with
:meth:`SocksSession.upstream_opened` or :meth:`SocksSession.upstream_failed`; after
success the session is a transparent pipe.

The handshake, as a table of states (one row per message the client must send)::

    GREETING    VER=5 NMETHODS METHODS...        -> AUTH (creds configured) | REQUEST
    AUTH        VER=1 ULEN UNAME PLEN PASSWD     -> REQUEST | CLOSED (refused)
    REQUEST     VER=5 CMD=1 RSV ATYP ADDR PORT   -> CONNECTING | CLOSED (bad request)
    CONNECTING  (waiting for the driver)         -> RELAY | CLOSED
    RELAY       raw bytes both ways              -> CLOSED

Only ``CONNECT`` is offered: ``BIND`` and ``UDP ASSOCIATE`` are answered with 0x07
(command not supported); the tunnel carries TCP streams only. Messages may arrive
split or pipelined in any way; bytes that follow the request are kept and passed on
once the upstream opens, so clients that send their TLS ClientHello early still work.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import re
import struct

from fluidity.errors import ProxyProtocolError
from fluidity.protocol.proxyevents import (
    CloseClient,
    EndUpstream,
    OpenUpstream,
    ProxyEvent,
    ProxyStateError,
    SendClient,
    SendUpstream,
)

__all__ = [
    "CloseClient",
    "EndUpstream",
    "OpenUpstream",
    "Reply",
    "SendClient",
    "SendUpstream",
    "SocksSession",
    "State",
    "encode_reply",
    "is_socks5",
    "reply_for_status",
]

# The same events as the HTTP core speaks, so one driver dispatches both.
Event = ProxyEvent

VERSION = 0x05
AUTH_VERSION = 0x01
METHOD_NO_AUTH = 0x00
METHOD_USERNAME_PASSWORD = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04


class Reply(enum.IntEnum):
    """RFC 1928 §6 reply codes."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    CONNECTING = "connecting"
    RELAY = "relay"
    CLOSED = "closed"


# Bytes a client may send before its tunnel is open (early data after the request).
# The driver should stop reading while CONNECTING; this bounds a client that ignores it.
MAX_EARLY_DATA = 64 * 1024

_HOSTNAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?$")


def is_socks5(first_byte: int) -> bool:
    """True when a connection's first byte opens a SOCKS5 greeting rather than HTTP."""
    return first_byte == VERSION


def reply_for_status(status: int, reason: str = "") -> Reply:
    """Map a tunnel stream's HTTP error status onto the closest SOCKS5 reply code.

    403 (target policy) is "not allowed"; 502 is "connection refused" when the reason
    says the target refused, else "host unreachable"; 504 (dial timeout) is "TTL
    expired", the code clients report as a timeout; 503 and anything else is a
    general failure.
    """
    if status == 403:
        return Reply.NOT_ALLOWED
    if status == 502:
        refused = "refused" in reason.lower()
        return Reply.CONNECTION_REFUSED if refused else Reply.HOST_UNREACHABLE
    if status == 504:
        return Reply.TTL_EXPIRED
    return Reply.GENERAL_FAILURE


def encode_reply(code: Reply) -> bytes:
    """A reply with BND.ADDR 0.0.0.0:0: the real bound address is on the server, far away."""
    return bytes((VERSION, code, 0x00, ATYP_IPV4)) + bytes(4) + struct.pack("!H", 0)


class _Malformed(Exception):
    """Internal: the client's message is wrong; ``answer`` is written before closing."""

    def __init__(self, message: str, answer: bytes = b"") -> None:
        super().__init__(message)
        self.answer = answer


class SocksSession:
    """One client connection speaking SOCKS5, from greeting to relay.

    ``credentials`` (username, password) makes RFC 1929 authentication mandatory;
    without it only the "no authentication" method is accepted. ``error`` holds the
    reason once the session closed the client for something it sent.
    """

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self._credentials = credentials
        self._buffer = bytearray()
        self._client_eof = False
        self.state = State.GREETING
        self.error: ProxyProtocolError | None = None
        self.target: tuple[str, int] | None = None

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the client (``b""`` means EOF) and return what to do."""
        if self.state is State.RELAY:
            return [SendUpstream(data)] if data else [EndUpstream()]
        if self.state is State.CLOSED:
            return []
        if not data:
            return self._on_early_eof()
        self._buffer += data
        if self.state is State.CONNECTING:
            return self._check_early_data()
        return self._advance()

    def upstream_opened(self) -> list[Event]:
        """The tunnel stream is open: answer success and pass on any early bytes.

        After the session closed the client (it sent too much early data), this
        returns nothing: the driver drops the stream it opened.
        """
        if self._expect(State.CONNECTING, "upstream_opened"):
            return []
        self.state = State.RELAY
        events: list[Event] = [SendClient(encode_reply(Reply.SUCCEEDED))]
        if self._buffer:
            events.append(SendUpstream(bytes(self._buffer)))
            self._buffer.clear()
        if self._client_eof:
            events.append(EndUpstream())
        return events

    def upstream_failed(self, status: int, reason: str) -> list[Event]:
        """The tunnel stream failed with an HTTP ``status``: answer the mapped code, close."""
        if self._expect(State.CONNECTING, "upstream_failed"):
            return []
        self.state = State.CLOSED
        self._buffer.clear()
        return [SendClient(encode_reply(reply_for_status(status, reason))), CloseClient()]

    # -- the handshake ------------------------------------------------------------

    def _advance(self) -> list[Event]:
        """Parse as many complete messages as the buffer holds."""
        events: list[Event] = []
        try:
            while self.state in _PARSERS:
                step = _PARSERS[self.state](self)
                if step is None:  # the message is not complete yet
                    break
                events += step
        except _Malformed as exc:
            return events + self._fail(str(exc), exc.answer)
        if self.state is State.CONNECTING:
            events += self._check_early_data()
        return events

    def _take(self, count: int) -> bytes:
        chunk = bytes(self._buffer[:count])
        del self._buffer[:count]
        return chunk

    def _parse_greeting(self) -> list[Event] | None:
        if len(self._buffer) < 2:
            return None
        if self._buffer[0] != VERSION:
            raise _Malformed(f"not a SOCKS5 greeting (version byte {self._buffer[0]:#04x})")
        count = self._buffer[1]
        if len(self._buffer) < 2 + count:
            return None
        methods = self._take(2 + count)[2:]
        wanted = METHOD_NO_AUTH if self._credentials is None else METHOD_USERNAME_PASSWORD
        if wanted not in methods:
            raise _Malformed(
                f"client offers SOCKS5 methods {list(methods)}, the agent needs {wanted}",
                bytes((VERSION, METHOD_NONE_ACCEPTABLE)),
            )
        self.state = State.AUTH if self._credentials is not None else State.REQUEST
        return [SendClient(bytes((VERSION, wanted)))]

    def _parse_auth(self) -> list[Event] | None:
        fields = _length_prefixed(self._buffer, offset=1, count=2)
        if fields is None:
            return None
        refused = bytes((AUTH_VERSION, 0x01))
        if self._buffer[0] != AUTH_VERSION:
            raise _Malformed(f"bad RFC 1929 version byte {self._buffer[0]:#04x}", refused)
        (username, password), end = fields
        del self._buffer[:end]
        assert self._credentials is not None
        want_user, want_password = (s.encode() for s in self._credentials)
        user_ok = hmac.compare_digest(username, want_user)
        password_ok = hmac.compare_digest(password, want_password)
        if not (user_ok and password_ok):
            raise _Malformed("SOCKS5 username or password refused", refused)
        self.state = State.REQUEST
        return [SendClient(bytes((AUTH_VERSION, 0x00)))]

    def _parse_request(self) -> list[Event] | None:
        if len(self._buffer) < 5:
            return None
        version, command, _reserved, atyp = self._buffer[:4]
        if version != VERSION:
            raise _Malformed(f"bad SOCKS5 request version {version:#04x}", _failure())
        if atyp not in (ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6):
            raise _Malformed(
                f"unknown SOCKS5 address type {atyp:#04x}",
                encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED),
            )
        address = _parse_address(self._buffer, atyp)
        if address is None:
            return None
        host, end = address
        if command != CMD_CONNECT:
            raise _Malformed(
                f"SOCKS5 command {command:#04x} is not supported, only CONNECT",
                encode_reply(Reply.COMMAND_NOT_SUPPORTED),
            )
        (port,) = struct.unpack_from("!H", self._buffer, end)
        del self._buffer[: end + 2]
        if port == 0:
            raise _Malformed("SOCKS5 request for port 0", _failure())
        self.state = State.CONNECTING
        self.target = (host, port)
        return [OpenUpstream(host, port, kind="socks")]

    # -- endings ------------------------------------------------------------------

    def _check_early_data(self) -> list[Event]:
        if len(self._buffer) <= MAX_EARLY_DATA:
            return []
        # The driver must answer upstream_opened/failed later; it learns of the close here.
        return self._fail(f"client sent over {MAX_EARLY_DATA} bytes before its tunnel opened")

    def _on_early_eof(self) -> list[Event]:
        if self.state is State.CONNECTING:
            self._client_eof = True  # a half-close: the reply may still be wanted
            return []
        where = self.state.value
        return self._fail(f"client closed the connection in the middle of the SOCKS5 {where}")

    def _fail(self, message: str, answer: bytes = b"") -> list[Event]:
        self.error = ProxyProtocolError(message)
        self.state = State.CLOSED
        self._buffer.clear()
        events: list[Event] = [SendClient(answer)] if answer else []
        return [*events, CloseClient()]

    def _expect(self, state: State, call: str) -> bool:
        """True when the session is already closed; ProxyStateError if ``call`` is out of turn."""
        if self.state is State.CLOSED:
            return True
        if self.state is not state:
            raise ProxyStateError(
                f"{call}() is legal only in state {state.name}, but the SOCKS5 session is "
                f"{self.state.name}: follow the events it emits"
            )
        return False


_PARSERS = {
    State.GREETING: SocksSession._parse_greeting,
    State.AUTH: SocksSession._parse_auth,
    State.REQUEST: SocksSession._parse_request,
}


def _failure() -> bytes:
    return encode_reply(Reply.GENERAL_FAILURE)


def _length_prefixed(
    buffer: bytearray, *, offset: int, count: int
) -> tuple[list[bytes], int] | None:
    """Read ``count`` fields of one length byte each, from ``offset``; None if incomplete.

    Raises :class:`_Malformed` for an empty field: RFC 1929 lengths run from 1 to 255.
    """
    fields: list[bytes] = []
    position = offset
    for _ in range(count):
        if len(buffer) <= position:
            return None
        length = buffer[position]
        if length == 0:
            raise _Malformed("empty RFC 1929 username or password", bytes((AUTH_VERSION, 0x01)))
        if len(buffer) < position + 1 + length:
            return None
        fields.append(bytes(buffer[position + 1 : position + 1 + length]))
        position += 1 + length
    return fields, position


def _parse_address(buffer: bytearray, atyp: int) -> tuple[str, int] | None:
    """Decode DST.ADDR at offset 4; return (host, offset of DST.PORT) or None if incomplete."""
    if atyp == ATYP_DOMAIN:
        end = 5 + buffer[4]
        if len(buffer) < end + 2:
            return None
        return _decode_hostname(bytes(buffer[5:end])), end
    size = 4 if atyp == ATYP_IPV4 else 16
    if len(buffer) < 4 + size + 2:
        return None
    raw = bytes(buffer[4 : 4 + size])
    address = ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw)
    return str(address), 4 + size


def _decode_hostname(raw: bytes) -> str:
    """A DNS name in ASCII (clients send IDNs as punycode); anything else is refused."""
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        name = ""
    if not _HOSTNAME.match(name) or any(len(label) > 63 for label in name.split(".")):
        raise _Malformed(f"bad SOCKS5 domain name {raw[:64]!r}", _failure())
    return name
