"""Warm requests: one small GET after another on a client connection already open.

Two ways, each a fresh blocking socket kept for the whole run (the cheapest client):

* ``tunnel``: a ``CONNECT`` to the origin once, then GETs inside the tunnel
  (direct: a plain keep-alive connection to the origin). Every proxy supports it.
* ``forward``: absolute-form GETs (``GET http://origin/``) on a keep-alive
  connection to the proxy, which forwards each one. A proxy that closes the
  connection after a response (tinyproxy) has no figure here.

The latency is the round trip of one request: written, whole response read.
"""

from __future__ import annotations

import socket
import statistics
import time

from benchmarks.clients import (
    IO_TIMEOUT,
    get_small,
    open_connection,
    percentile,
)
from benchmarks.systems import LOOPBACK, BenchmarkError


def warm_latency(
    proxy: tuple[str, int] | None, http_port: int, count: int, warmup: int
) -> dict[str, dict[str, float] | None]:
    """p50/p99 of warm requests in a tunnel and, through a proxy, forwarded."""
    return {
        "tunnel": _warm(proxy, http_port, count, warmup, forward=False),
        "forward": _warm(proxy, http_port, count, warmup, forward=True) if proxy else None,
    }


def _warm(
    proxy: tuple[str, int] | None, http_port: int, count: int, warmup: int, *, forward: bool
) -> dict[str, float] | None:
    target = (LOOPBACK, http_port)
    host = f"{LOOPBACK}:{http_port}".encode()
    if forward:
        assert proxy is not None
        sock = socket.create_connection(proxy, timeout=IO_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = open_connection(proxy, target)
    path = b"http://" + host + b"/" if forward else b"/"
    samples: list[float] = []
    try:
        for i in range(warmup + count):
            start = time.perf_counter()
            try:
                get_small(sock, host, path)
            except (BenchmarkError, OSError):
                if forward:
                    return None  # closes after each response: no warm forwarded requests
                raise
            if i >= warmup:
                samples.append((time.perf_counter() - start) * 1000)
    finally:
        sock.close()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
        "samples": count,
    }
