"""The agent's HTTP/1.1 core alone, in memory: CPU per forwarded keep-alive request.

Two measurements, no sockets, no event loop::

    .venv/bin/python -m benchmarks.http1_core            # both, 20,000 requests each
    .venv/bin/python -m benchmarks.http1_core --count 2000

``session``: one :class:`~fluidity.protocol.proxy.ClientSession` forwards ``count``
keep-alive GETs (wrk's request, the benchmark origin's response): the whole core as
the agent drives it, events included. Run it on two checkouts to compare them.

``parsers``: what a request and its response cost to parse with each candidate, doing
the work the core needs of it (the request head with raw header bytes, the response's
end): h11 as the core used it (a server-role connection for the request, a client-role
one told the request and fed the response), httptools (llhttp; skipped when not
installed), and the core's own response framer (``protocol/http1frame.py``, when
present).

Each figure is the median of ``--repeat`` runs, in microseconds per request.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable

import h11

from fluidity.protocol.proxy import ClientSession, OpenUpstream

# What wrk sends through the proxy, and what benchmarks/origin.py answers.
REQUEST = b"GET http://127.0.0.1:8080/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 32\r\n\r\n"
    b"hello from the benchmark origin\n"
)


def session_run(count: int) -> float:
    """Seconds for ``count`` keep-alive exchanges through one ClientSession."""
    session = ClientSession()
    session.receive_client(REQUEST)
    assert isinstance(session.next_event(), OpenUpstream)
    session.upstream_opened()
    session.events()
    session.receive_upstream(RESPONSE)
    session.events()
    start = time.perf_counter()
    for _ in range(count):
        session.receive_client(REQUEST)
        session.events()
        session.receive_upstream(RESPONSE)
        session.events()
    elapsed = time.perf_counter() - start
    assert session.idle, "the session must be back to IDLE after each response"
    return elapsed


def h11_run(count: int) -> float:
    """The request through a server-role h11, the response through a client-role one."""
    start = time.perf_counter()
    server = h11.Connection(h11.SERVER)
    client = h11.Connection(h11.CLIENT)
    for _ in range(count):
        server.receive_data(REQUEST)
        request = server.next_event()
        assert isinstance(request, h11.Request)
        request.headers.raw_items()
        server.next_event()  # EndOfMessage
        client.send(h11.Request(method=b"GET", target=b"/", headers=request.headers))
        client.send(h11.EndOfMessage())
        client.receive_data(RESPONSE)
        while not isinstance(client.next_event(), h11.EndOfMessage):
            pass
        server.send(h11.Response(status_code=200, headers=[(b"Content-Length", b"32")]))
        server.send(h11.Data(data=b"x" * 32))
        server.send(h11.EndOfMessage())
        server.start_next_cycle()
        client.start_next_cycle()
    return time.perf_counter() - start


def httptools_run(count: int) -> float:
    """The request and the response through llhttp, headers kept as raw bytes."""
    httptools = importlib.import_module("httptools")

    class Sink:
        def __init__(self) -> None:
            self.headers: list[tuple[bytes, bytes]] = []
            self.url = b""
            self.done = False

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_message_complete(self) -> None:
            self.done = True

    start = time.perf_counter()
    sink = Sink()
    request_parser = httptools.HttpRequestParser(sink)
    response_parser = httptools.HttpResponseParser(sink)
    for _ in range(count):
        sink.headers, sink.url, sink.done = [], b"", False
        request_parser.feed_data(REQUEST)
        request_parser.get_method()
        request_parser.get_http_version()
        assert sink.done
        sink.headers, sink.done = [], False
        response_parser.feed_data(RESPONSE)
        response_parser.get_status_code()
        assert sink.done
    return time.perf_counter() - start


def framer_run(count: int) -> float:
    """The request through a server-role h11, the response through the core's framer."""
    http1frame = importlib.import_module("fluidity.protocol.http1frame")
    start = time.perf_counter()
    server = h11.Connection(h11.SERVER)
    for _ in range(count):
        server.receive_data(REQUEST)
        request = server.next_event()
        assert isinstance(request, h11.Request)
        request.headers.raw_items()
        server.next_event()
        framer = http1frame.ResponseFramer(request.method)
        ready, _ = framer.feed(RESPONSE)
        assert ready == RESPONSE and framer.progress is http1frame.Progress.ENDED
        server.send(h11.Response(status_code=200, headers=[(b"Content-Length", b"32")]))
        server.send(h11.Data(data=b"x" * 32))
        server.send(h11.EndOfMessage())
        server.start_next_cycle()
    return time.perf_counter() - start


def h11_request_only_run(count: int) -> float:
    """The server-role h11 share of :func:`framer_run` (parse + answer bookkeeping)."""
    start = time.perf_counter()
    server = h11.Connection(h11.SERVER)
    for _ in range(count):
        server.receive_data(REQUEST)
        request = server.next_event()
        assert isinstance(request, h11.Request)
        server.next_event()
        server.send(h11.Response(status_code=200, headers=[(b"Content-Length", b"32")]))
        server.send(h11.Data(data=b"x" * 32))
        server.send(h11.EndOfMessage())
        server.start_next_cycle()
    return time.perf_counter() - start


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def measure(name: str, run: Callable[[int], float], count: int, repeat: int) -> None:
    run(min(count, 1000))  # warm up
    per_request = [run(count) / count * 1e6 for _ in range(repeat)]
    spread = f"{min(per_request):.1f}-{max(per_request):.1f}"
    print(f"{name:<34} {statistics.median(per_request):7.1f} us/request  ({spread})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("which", nargs="*", default=["session", "parsers"])
    args = parser.parse_args()
    if "session" in args.which:
        measure("session (ClientSession, whole core)", session_run, args.count, args.repeat)
    if "parsers" in args.which:
        measure("h11 request + h11 response", h11_run, args.count, args.repeat)
        measure("h11 request alone", h11_request_only_run, args.count, args.repeat)
        if _available("fluidity.protocol.http1frame"):
            measure("h11 request + own response framer", framer_run, args.count, args.repeat)
        if _available("httptools"):
            measure("httptools request + response", httptools_run, args.count, args.repeat)
        else:
            print("httptools: not installed (pip install httptools)")


if __name__ == "__main__":
    main()
