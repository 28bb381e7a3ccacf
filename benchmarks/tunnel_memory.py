"""Where an idle CONNECT tunnel's memory goes, by line of Fluidity's own code.

``python -m benchmarks.tunnel_memory [--tunnels N]`` runs a server, an agent and
a silent origin in this process, opens N CONNECT tunnels through the agent, and
prints what ``tracemalloc`` saw allocated per tunnel while they opened: all of
it, Fluidity's own share, and Fluidity's top lines. It measures Python
allocations only (not the C structures of OpenSSL, uvloop or llhttp, which the
benchmark's RSS figure includes), and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fluidity.pki.certs import ensure_quickstart_pki
from support.harness import start_tunnel

WARM_UP = 50
TIMEOUT = 10.0


async def measure(tunnels: int, top: int) -> None:
    pki = ensure_quickstart_pki(Path(tempfile.mkdtemp(prefix="fluidity-mem-")))
    origin = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = origin.sockets[0].getsockname()[1]
    tunnel = await start_tunnel(pki)
    assert tunnel.agent.address is not None
    agent_port = tunnel.agent.address[1]
    writers: list[asyncio.StreamWriter] = []

    async def open_one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", agent_port)
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"the agent answered {head!r}")
        writers.append(writer)

    try:
        for _ in range(WARM_UP):
            await open_one()
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        for _ in range(tunnels):
            await open_one()
        gc.collect()
        stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
        ours = [s for s in stats if "/fluidity/" in str(s.traceback)]
        print(f"{tunnels} tunnels, agent + server + clients in one process")
        print(
            f"all Python allocations: {sum(s.size_diff for s in stats) / tunnels:,.0f} B per tunnel"
        )
        print(
            f"Fluidity's own lines:   {sum(s.size_diff for s in ours) / tunnels:,.0f} B per tunnel"
        )
        for stat in ours[:top]:
            print(f"  {stat.size_diff / tunnels:7,.0f} B  {stat.traceback}")
    finally:
        for writer in writers:
            writer.close()
        await tunnel.close()
        origin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunnels", type=int, default=900, help="tunnels to open (default 900)")
    parser.add_argument("--top", type=int, default=15, help="lines to list (default 15)")
    args = parser.parse_args()
    asyncio.run(measure(args.tunnels, args.top))


if __name__ == "__main__":
    main()
