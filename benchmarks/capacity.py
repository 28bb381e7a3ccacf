"""What one server process costs, for capacity planning: ``python -m benchmarks.capacity``.

The whole-chain benchmark (``benchmarks.run``) measures agent, server, load
generator and origin sharing one machine, so its requests/s and MB/s are the
chain's. Capacity planning needs the *server's* share: this runs the same
chain (``benchmarks.systems.fluidity``, the same origin, wrk or its asyncio
stand-in) and reads the server process's own CPU seconds around each load,
which do not depend on what else the machine runs. From them:

- CPU microseconds per request (keep-alive GETs through the proxy: the
  agent parses HTTP, the server only carries bytes on a stream it has) and
  the requests/s one vCPU of server would carry;
- CPU microseconds per new stream (a new client connection per request: a
  CONNECT stream and a dial to the origin each) and the streams/s per vCPU;
- CPU seconds per GiB through one CONNECT stream and the MB/s one vCPU carries;
- server memory per tunnel: RSS growth with ``--tunnels`` agent connections
  (one TLS 1.3 + HTTP/2 connection each, kept by real ``TunnelKeeper`` s).

``--smoke`` runs each for a second or two. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import clients, systems
from benchmarks.run import origin
from fluidity.agent.keeper import TunnelKeeper
from fluidity.pki.certs import ensure_quickstart_pki
from fluidity.transport.tls import agent_context


def measure_requests(system: systems.System, http_port: int, seconds: float) -> dict[str, Any]:
    server_pid = system.pids[1]
    before = clients.cpu_seconds([server_pid])
    result = clients.requests_per_second(system.proxy, http_port, 100, seconds)
    cpu = clients.cpu_seconds([server_pid]) - before
    requests = float(result["rps"]) * max(1, round(seconds))  # type: ignore[arg-type]
    per_request = cpu / requests
    return {
        "chain_rps_at_100_connections": result["rps"],
        "tool": result["tool"],
        "server_cpu_us_per_request": round(per_request * 1e6, 1),
        "server_rps_per_vcpu": round(1 / per_request),
    }


def measure_streams(system: systems.System, http_port: int, count: int) -> dict[str, Any]:
    """A new client connection per request: a new CONNECT stream and a new dial each."""
    server_pid = system.pids[1]
    before = clients.cpu_seconds([server_pid])
    latency = clients.latency(system.proxy, http_port, count, 0)
    per_stream = (clients.cpu_seconds([server_pid]) - before) / count
    return {
        "requests": count,
        "chain_p50_ms": latency["p50_ms"],
        "server_cpu_us_per_new_stream": round(per_stream * 1e6, 1),
        "server_new_streams_per_s_per_vcpu": round(1 / per_stream),
    }


def measure_bulk(system: systems.System, source_port: int, size: int) -> dict[str, Any]:
    server_pid = system.pids[1]
    before = clients.cpu_seconds([server_pid])
    elapsed = clients.bulk(system.proxy, source_port, size)
    cpu = clients.cpu_seconds([server_pid]) - before
    return {
        "chain_mb_s": round(size / elapsed / clients.MB, 1),
        "server_cpu_s_per_gib": round(cpu * clients.GIB / size, 2),
        "server_mb_s_per_vcpu": round(size / cpu / clients.MB),
    }


async def measure_tunnels(workdir: Path, server_port: int, server_pid: int, count: int) -> Any:
    """RSS growth of the server with ``count`` more agent connections held open."""
    pki = ensure_quickstart_pki(workdir / "pki")
    context = agent_context(pki.ca_cert, pki.client_cert, pki.client_key)
    before = clients.rss_bytes([server_pid])
    keepers = [
        TunnelKeeper(
            host="127.0.0.1",
            port=server_port,
            server_name="localhost",
            context=context,
            cert_description="client",
        )
        for _ in range(count)
    ]
    tasks = [asyncio.create_task(keeper.run()) for keeper in keepers]
    try:
        async with asyncio.timeout(120):
            for keeper in keepers:
                await keeper.wait_ready(within=60)
        await asyncio.sleep(1.0)  # let the server settle its buffers after the handshakes
        grown = clients.rss_bytes([server_pid]) - before
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
    return {"tunnels": count, "server_kib_per_tunnel": round(grown / count / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a second or two per figure")
    parser.add_argument("--tunnels", type=int, default=0, help="agent connections to hold")
    args = parser.parse_args(argv)
    seconds = 1.0 if args.smoke else 5.0
    size = (32 if args.smoke else 256) * clients.MIB
    tunnels = args.tunnels or (50 if args.smoke else 500)
    with (
        tempfile.TemporaryDirectory() as tmp,
        origin() as ports,
        systems.fluidity(Path(tmp), idle=0) as system,
    ):
        results: dict[str, Any] = {
            "requests": measure_requests(system, ports["http"], seconds),
            "new_streams": measure_streams(system, ports["http"], 200 if args.smoke else 2000),
            "bulk": measure_bulk(system, ports["source"], size),
        }
        server_port = _server_port(Path(tmp))
        results["tunnels"] = asyncio.run(
            measure_tunnels(Path(tmp), server_port, system.pids[1], tunnels)
        )
    print(json.dumps(results, indent=2))
    return 0


def _server_port(workdir: Path) -> int:
    """The server's port, from the agent config ``systems.fluidity`` wrote."""
    import yaml

    config = yaml.safe_load((workdir / "agent.yaml").read_text())
    return int(str(config["server"]).rsplit(":", 1)[1])


if __name__ == "__main__":
    sys.exit(main())
