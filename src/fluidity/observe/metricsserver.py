"""The ``metrics:`` listener: ``GET /metrics`` in the Prometheus text format, and,
given a ``dashboard`` view, the dashboard page at ``/`` and its JSON
(:mod:`fluidity.observe.dashboard`; read-only: this listener takes no action).

It runs on the event loop that owns the state it reports, so a scrape reads
connections and streams between two callbacks, never while they change (a
thread-based server would race the loop). Each scrape is one short
HTTP/1.1 exchange parsed by h11: the request head is bounded in size and
time, the answer carries ``Content-Length`` and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections.abc import Callable, Mapping
from typing import Any

import h11

from fluidity.config.values import Address
from fluidity.errors import ConfigError
from fluidity.observe import dashboard as pages
from fluidity.observe.metrics import Metrics

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
REQUEST_TIMEOUT = 10.0
MAX_HEAD = 16 * 1024


class MetricsServer:
    """Serves one ``Metrics`` at ``address``; ``start`` binds, ``close`` stops."""

    def __init__(
        self,
        metrics: Metrics,
        address: Address,
        *,
        key: str = "metrics",
        dashboard: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.dashboard = dashboard
        self.listen = address
        self.address: tuple[str, int] | None = None
        self._key = key
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Bind; ``address`` then holds the bound host and port. ``ConfigError`` if it cannot."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self.listen.host, self.listen.port
            )
        except OSError as exc:
            raise ConfigError(
                f"{self._key}: cannot listen on {self.listen}: {exc.strerror or exc}; "
                f"choose another address with {self._key}: in the config file"
            ) from exc
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        log.info("metrics on http://%s:%d%s", *self.address, METRICS_PATH)

    async def close(self) -> None:
        """Stop listening and drop scrapes in progress."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await _read_request(reader)
                if request is not None:
                    writer.write(self._answer(request))
                    await writer.drain()
        except (OSError, TimeoutError, h11.ProtocolError):
            pass  # a scraper that went away or spoke nonsense: nothing to answer
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, request: h11.Request) -> bytes:
        method = request.method.decode("ascii", "replace")
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response(405, b"only GET and HEAD\n", "text/plain", head_only=False)
        head_only = method == "HEAD"
        if self.dashboard is not None and path in (pages.PAGE_PATH, pages.DATA_PATH):
            return self._dashboard(request, path, head_only)
        if path != METRICS_PATH:
            body = f"fluidity {self.metrics.role}: metrics are at {METRICS_PATH}\n".encode()
            return _response(404, body, "text/plain", head_only=method == "HEAD")
        accept = next((v.decode("latin-1") for k, v in request.headers if k == b"accept"), "")
        body, content_type = self.metrics.exposition(accept)
        return _response(200, body, content_type, head_only=head_only)

    def _dashboard(self, request: h11.Request, path: str, head_only: bool) -> bytes:
        assert self.dashboard is not None
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]
        view = self.dashboard
        try:
            pages.check_host(headers)
            answer = pages.page() if path == pages.PAGE_PATH else pages.data(view())
        except pages.DashboardRefused as exc:
            answer = pages.refusal(exc)
        return _response(
            answer.status,
            answer.body,
            answer.content_type,
            head_only=head_only,
            headers=answer.headers,
        )


async def _read_request(reader: asyncio.StreamReader) -> h11.Request | None:
    """The request head, or None if the peer closed first."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(4096))
        else:
            return None  # ConnectionClosed


def _response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    head_only: bool,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    reason = _reason_phrase(status)
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{extra}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + body


def _reason_phrase(status: int) -> str:
    """The reason phrase of ``status`` (``HTTPStatus``), ``Unknown`` if there is none."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
