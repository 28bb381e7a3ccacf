"""The per-request path, A/B: this checkout's agent and server against another's.

    .venv/bin/python -m benchmarks.hotpath --before-src /tmp/before/src   # A/B
    .venv/bin/python -m benchmarks.hotpath --runs 1 --seconds 1 --count 200   # smoke

``--before-src`` is the ``src/`` directory of another checkout (``git archive REV src |
tar -x -C /tmp/before``); its Fluidity runs with it first on ``PYTHONPATH``. The two
alternate (before, after, after, before, ...) on one origin, so the machine's load
falls on both alike; stunnel+tinyproxy, when installed, is measured once per run too.

Per system and run, with the harness of ``benchmarks/run.py`` (origin, processes,
wrk):

- warm forward request p50/p99: ``--count`` sequential ``GET http://origin/`` on one
  open keep-alive client connection, after 100 warm-ups (tinyproxy closes after each
  answer, so its figure is a new connection each time);
- warm tunnelled request p50/p99: the same GETs inside one open ``CONNECT`` tunnel;
- req/s at 100 connections: wrk, keep-alive absolute-form GETs, ``--seconds``.

Medians over the runs are printed as a Markdown table, with after/before ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks import clients, systems
from benchmarks.run import origin

LOOPBACK = "127.0.0.1"


def read_response(sock: socket.socket) -> None:
    """Read one Content-Length response (the origin's)."""
    head, rest = clients.read_head(sock)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        more = sock.recv(65536)
        if not more:
            raise systems.BenchmarkError("the connection closed mid-response")
        rest += more


def warm(proxy: tuple[str, int], http_port: int, count: int, *, tunnel: bool) -> dict[str, float]:
    """p50/p99 (ms) of sequential GETs on one connection (a fresh one if it closes)."""
    host = f"{LOOPBACK}:{http_port}".encode()
    target = b"/" if tunnel else b"http://" + host + b"/"
    request = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host)
    samples: list[float] = []
    sock: socket.socket | None = None
    try:
        for i in range(100 + count):
            if sock is None:
                sock = _connect(proxy, http_port, tunnel)
            start = time.perf_counter()
            sock.sendall(request)
            try:
                read_response(sock)
            except (systems.BenchmarkError, OSError):  # closed after the answer: reopen
                sock.close()
                sock = None
                continue
            if i >= 100:
                samples.append((time.perf_counter() - start) * 1000)
    finally:
        if sock is not None:
            sock.close()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(clients.percentile(samples, 0.99), 3),
    }


def _connect(proxy: tuple[str, int], http_port: int, tunnel: bool) -> socket.socket:
    if tunnel:
        return clients.open_connection(proxy, (LOOPBACK, http_port))
    sock = socket.create_connection(proxy, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def measure(system: systems.System, ports: dict[str, int], args: argparse.Namespace) -> dict:
    assert system.proxy is not None
    http = ports["http"]
    return {
        "warm_forward": warm(system.proxy, http, args.count, tunnel=False),
        "warm_tunnel": warm(system.proxy, http, args.count, tunnel=True),
        "rps_100": clients.requests_per_second(system.proxy, http, 100, args.seconds)["rps"],
    }


@contextlib.contextmanager
def fluidity_from(src: str | None, workdir: Path) -> Iterator[systems.System]:
    """A fluidity system whose processes import ``src`` first (None: this checkout)."""
    saved = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = src
    try:
        with systems.fluidity(workdir, idle=0) as system:
            yield system
    finally:
        if src is not None:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-src", help="src/ of the checkout to compare against")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--no-baseline", action="store_true", help="skip stunnel+tinyproxy")
    args = parser.parse_args()
    variants: list[tuple[str, str | None]] = [("after", None)]
    if args.before_src:
        variants.insert(0, ("before", str(Path(args.before_src).resolve())))
    baseline = not args.no_baseline and not systems.available()["stunnel+tinyproxy"]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp, origin() as ports:
        for run in range(args.runs):
            order = variants if run % 2 == 0 else variants[::-1]
            for name, src in order:
                work = Path(tmp) / f"{name}-{run}"
                work.mkdir()
                with fluidity_from(src, work) as system:
                    results.setdefault(name, []).append(measure(system, ports, args))
                print(f"run {run + 1} {name}: {results[name][-1]}", flush=True)
            if baseline:
                work = Path(tmp) / f"baseline-{run}"
                work.mkdir()
                with systems.stunnel_tinyproxy(work, idle=100) as system:
                    results.setdefault("stunnel+tinyproxy", []).append(measure(system, ports, args))
                print(f"run {run + 1} stunnel+tinyproxy: {results['stunnel+tinyproxy'][-1]}")
    print_table(results)


def _median(runs: list[dict], key: str, sub: str | None = None) -> float:
    return statistics.median(r[key][sub] if sub else r[key] for r in runs)


def print_table(results: dict[str, list[dict]]) -> None:
    rows = [
        ("warm forward request p50 (ms)", "warm_forward", "p50_ms"),
        ("warm forward request p99 (ms)", "warm_forward", "p99_ms"),
        ("warm tunnelled request p50 (ms)", "warm_tunnel", "p50_ms"),
        ("warm tunnelled request p99 (ms)", "warm_tunnel", "p99_ms"),
        ("req/s, 100 connections (wrk)", "rps_100", None),
    ]
    names = list(results)
    print("\n| medians of the runs | " + " | ".join(names) + " | after / before |")
    print("|---" * (len(names) + 2) + "|")
    for label, key, sub in rows:
        values = {n: _median(results[n], key, sub) for n in names}
        ratio = ""
        if values.get("before"):
            ratio = f"{values['after'] / values['before']:.2f}"
        cells = " | ".join(f"{values[n]:,.3f}" if sub else f"{values[n]:,.0f}" for n in names)
        print(f"| {label} | {cells} | {ratio} |")


if __name__ == "__main__":
    main()
