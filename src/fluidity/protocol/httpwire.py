"""HTTP/1.1 wire helpers for the agent's proxy core: pure functions over bytes.

Everything :mod:`fluidity.protocol.proxy` needs to read where a request goes and write
the bytes the target and the client receive (where a response ends is
:mod:`fluidity.protocol.http1frame`'s):

- :func:`parse_connect_target` and :func:`parse_absolute_target` read the target of
  ``CONNECT host:port`` and ``GET http://host[:port]/path``, raising
  :class:`~fluidity.errors.ProxyProtocolError` (400) when it cannot be used;
- :func:`serialise_request_head` writes the origin-form head the target receives:
  we promise the client's header order, case, duplicates and values, minus the
  proxy-only headers (the :class:`RequestHead` keeps them as read);
- :func:`error_response` and :func:`local_response` write the agent's own answers;
- :func:`credentials_match` checks ``Proxy-Authorization: Basic``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from fluidity.errors import ProxyProtocolError
from fluidity.protocol.authority import parse_authority

Header = tuple[bytes, bytes]

# Meant for this proxy alone, never forwarded to the target.
PROXY_ONLY_HEADERS = frozenset({b"proxy-connection", b"proxy-authorization"})

_ABSOLUTE = "send absolute-form requests (GET http://host/path) or CONNECT host:port"


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request head as read: ``headers`` are the raw (name, value) pairs as sent;
    ``upgrade`` says whether it proposes a protocol switch (``Upgrade`` listed in
    ``Connection``), after which the client's bytes wait for the answer."""

    method: bytes
    target: bytes
    http_version: bytes  # b"1.1"
    headers: list[Header]
    upgrade: bool = False


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    """Where an absolute-form request goes and the origin-form target it is sent with."""

    host: str
    port: int
    origin_target: bytes


def parse_connect_target(authority: bytes) -> tuple[str, int]:
    """Read a CONNECT target (``host:port``, ``[v6]:port``) as ``(host, port)``.

    The host is lower-cased and bare (no IPv6 brackets). Raises ``ProxyProtocolError``
    (400) naming what is wrong: a missing or out-of-range port, an empty host,
    userinfo, a path, whitespace (checks of :func:`fluidity.protocol.authority.parse_authority`).
    """
    try:
        host, port = parse_authority(authority.decode("latin-1"))
    except ValueError as exc:
        raise ProxyProtocolError(f"cannot CONNECT: {exc}") from None
    return host.lower(), port


def parse_absolute_target(method: bytes, target: bytes) -> ForwardTarget:
    """Read an absolute-form request target (``http://host[:port]/path?query``).

    The origin-form target is the path and query as sent (``/`` when the path is
    empty); for ``OPTIONS`` with an empty path and no query it is ``*`` (RFC 9112
    §3.2.4). A fragment is cut off. ``https://`` targets are refused with a hint to
    use CONNECT; other schemes and malformed authorities with 400 as well.
    """
    text = target.decode("latin-1")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ProxyProtocolError(f"cannot read the request target {text[:200]!r}: {_ABSOLUTE}")
    if scheme.lower() == "https":
        raise ProxyProtocolError(
            "https:// URLs must go through a CONNECT tunnel, not a plain proxy request: "
            "configure the client to use this proxy for HTTPS (HTTPS_PROXY=http://host:port)"
        )
    if scheme.lower() != "http":
        raise ProxyProtocolError(f"unsupported URL scheme {scheme!r}: only http:// is forwarded")
    rest = rest.partition("#")[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    host, port = _host_and_port(rest[:cut])
    return ForwardTarget(host, port, _origin_form(method, rest[cut:]).encode("latin-1"))


def _host_and_port(authority: str) -> tuple[str, int]:
    """``host[:port]`` of an http URL; the port defaults to 80 (also for ``host:``)."""
    if authority.endswith(":"):
        authority += "80"
    elif authority.endswith("]") or ":" not in authority:
        authority += ":80"
    try:
        host, port = parse_authority(authority)
    except ValueError as exc:
        raise ProxyProtocolError(f"cannot forward to this URL: {exc}") from None
    return host.lower(), port


def _origin_form(method: bytes, path_and_query: str) -> str:
    if not path_and_query:
        return "*" if method == b"OPTIONS" else "/"
    if path_and_query.startswith("?"):
        return "/" + path_and_query
    return path_and_query


def serialise_request_head(
    method: bytes, target: bytes, http_version: bytes, headers: Iterable[Header]
) -> bytes:
    """Write a request head byte for byte: headers in the given order, case and values.

    ``Proxy-Connection`` and ``Proxy-Authorization`` (any case) are left out.
    """
    lines = [b"%s %s HTTP/%s\r\n" % (method, target, http_version)]
    lines.extend(
        b"%s: %s\r\n" % (name, value)
        for name, value in headers
        if name.lower() not in PROXY_ONLY_HEADERS
    )
    lines.append(b"\r\n")
    return b"".join(lines)


def client_keeps_alive(request: RequestHead) -> bool:
    """Whether the client may send another request on its connection after this one.

    RFC 9112 §9.3: a proxy must not keep a persistent connection with an HTTP/1.0
    client, ``Connection: keep-alive`` or not; HTTP/1.1 persists unless ``close``.
    """
    tokens = header_tokens(request.headers, b"connection")
    return request.http_version == b"1.1" and b"close" not in tokens


def check_head(request: RequestHead, max_head: int) -> None:
    """Refuse a request head that is too large, or framed two ways.

    The reader bounds only a head that arrives in pieces; one that arrives whole in a
    single read is measured here (431). A request with both ``Content-Length`` and
    ``Transfer-Encoding`` is how requests are smuggled past proxies that read one and
    targets that read the other: refused with 400 (RFC 9112 §6.3).
    """
    raw = request.headers
    size = len(request.method) + len(request.target) + sum(len(n) + len(v) + 4 for n, v in raw)
    if size > max_head:
        raise ProxyProtocolError(
            f"the request head is over {max_head} bytes: send fewer or shorter headers", 431
        )
    names = {name.lower() for name, _ in raw}
    if {b"content-length", b"transfer-encoding"} <= names:
        raise ProxyProtocolError(
            "the request has both Content-Length and Transfer-Encoding: send only one"
        )


def has_body(headers: Iterable[Header]) -> bool:
    """Whether a request's headers announce a body (chunked, or a non-zero length)."""
    listed = list(headers)
    return bool(header_tokens(listed, b"transfer-encoding")) or bool(
        header_tokens(listed, b"content-length") - {b"0"}
    )


def header_tokens(headers: Iterable[Header], name: bytes) -> set[bytes]:
    """The lower-cased comma-separated tokens of every ``name`` header (``name`` lower-case)."""
    tokens: set[bytes] = set()
    for raw_name, value in headers:
        if raw_name.lower() == name:
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return tokens


def credentials_match(headers: Iterable[Header], expected: bytes) -> bool:
    """Whether exactly one ``Proxy-Authorization: Basic`` header carries ``expected``.

    ``expected`` is ``b"user:password"`` (UTF-8); compared in constant time.
    """
    values = [v for n, v in headers if n.lower() == b"proxy-authorization"]
    if len(values) != 1:
        return False
    scheme, _, token = values[0].strip().partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        presented = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(presented, expected)


def require_credentials(headers: Sequence[Header], expected: bytes | None) -> None:
    """Raise ``ProxyProtocolError`` (407) unless ``expected`` is None or was presented."""
    if expected is None or credentials_match(headers, expected):
        return
    if any(name.lower() == b"proxy-authorization" for name, _ in headers):
        raise ProxyProtocolError("proxy credentials refused: check user and password", 407)
    raise ProxyProtocolError(
        "this proxy requires credentials: send Proxy-Authorization: Basic "
        "(curl: --proxy-user USER:PASSWORD)",
        407,
    )


def error_response(status: int, reason: str, extra_headers: Sequence[Header] = ()) -> bytes:
    """The agent's own error answer: ``reason`` as a ``text/plain`` line, ``Connection: close``."""
    body = (reason.rstrip("\n") + "\n").encode("utf-8", "replace")
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Connection", b"close"),
        *extra_headers,
    ]
    return _response_head(status, headers) + body


def local_response(
    status: int, body: bytes, headers: Sequence[Header], *, head_only: bool, keep_alive: bool
) -> bytes:
    """A response the agent answers itself, framed by ``Content-Length``.

    ``head_only`` (a HEAD request) keeps the length but leaves the body out.
    """
    framing = [(b"Content-Length", b"%d" % len(body))]
    if not keep_alive:
        framing.append((b"Connection", b"close"))
    return _response_head(status, [*headers, *framing]) + (b"" if head_only else body)


def _response_head(status: int, headers: Iterable[Header]) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status).encode("ascii"))]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
    lines.append(b"\r\n")
    return b"".join(lines)


def reason_phrase(status: int) -> str:
    """The standard reason phrase for ``status`` (``"Error"`` for unregistered codes)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
