"""One ALPN, two services: the WebSocket transport or the HTTPS proxy, by the first request.

A TLS connection with ALPN ``http/1.1`` (or none) on the server's port is either
an agent's WebSocket transport or, with ``https_proxy`` on, a client using the
server as an HTTPS proxy. ALPN cannot tell them apart, the first request line
can: the WebSocket transport asks for its path in origin-form (``GET /path``),
a proxy client says ``CONNECT host:port`` or names an absolute URL
(``GET http://host/``). ``FirstRequest`` holds the connection's first bytes until
that line is complete, then hands the connection, and the bytes, to the service
the line names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, cast

from fluidity.transport.innertransport import deliver

# A request line longer than this is no WebSocket transport's: the proxy answers it
# (with 414 or 400, as the agent would).
MAX_LINE = 8192

Service = Literal["link", "proxy"]


def classify(head: bytes) -> Service | None:
    """Which service the first request line in ``head`` asks for; None until it is complete.

    Empty lines before the request are skipped, as RFC 9112 section 2.2 allows.
    Anything that is not an origin-form request (a path) goes to the proxy, whose
    parser answers malformed requests properly.
    """
    head = head.lstrip(b"\r\n")
    line, newline, _ = head.partition(b"\n")
    if not newline:
        return "proxy" if len(head) > MAX_LINE else None
    parts = line.split(b" ")
    if len(parts) == 3 and parts[0] != b"CONNECT" and parts[1].startswith(b"/"):
        return "link"
    return "proxy"


class FirstRequest(asyncio.Protocol):
    """Holds a connection until its first request line, then hands it to the chosen
    service (``make_link`` or ``make_proxy``). Closes it if no line arrives within
    ``timeout`` seconds, or if the client ends it first."""

    def __init__(
        self,
        make_link: Callable[[], asyncio.BaseProtocol],
        make_proxy: Callable[[], asyncio.BaseProtocol],
        timeout: float,
    ) -> None:
        self._makers = {"link": make_link, "proxy": make_proxy}
        self._timeout = timeout
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._transport.close)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        service = classify(self._buffer)
        if service is not None:
            self._hand_over(service)

    def eof_received(self) -> bool:
        return False  # nothing asked for yet: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _hand_over(self, service: Service) -> None:
        self._cancel_timer()
        transport = self._transport
        assert transport is not None, "bytes arrive after connection_made"
        target = self._makers[service]()
        transport.set_protocol(target)
        target.connection_made(transport)
        if not transport.is_closing():
            deliver(target, self._buffer)
        self._buffer = b""

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
