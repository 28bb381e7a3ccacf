"""The HTTP/2 layer alone: ``python -m benchmarks.h2_layer``.

Two ``TunnelProtocol``s (agent and server) joined in memory move 512 MiB over
one stream, with no sockets, TLS or event loop, and the CPU seconds per GiB
are printed: the cost of h2, hyperframe and our flow control, apart from
everything else a bulk transfer pays for.
"""

from __future__ import annotations

import time

from fluidity.protocol.events import DataReceived
from fluidity.protocol.tunnel import Side, TunnelProtocol

CHUNK = 256 * 1024
TOTAL = 512 << 20


def exchange(agent: TunnelProtocol, server: TunnelProtocol) -> None:
    """Move bytes both ways until both sides are quiet (bounded)."""
    for _ in range(100):
        to_server, to_agent = agent.data_to_send(), server.data_to_send()
        if not to_server and not to_agent:
            return
        if to_server:
            server.receive_data(to_server)
        if to_agent:
            agent.receive_data(to_agent)
    raise RuntimeError("the two sides never went quiet")


def cpu_seconds_per_gib(total: int = TOTAL) -> float:
    """Server-to-agent transfer of ``total`` bytes; CPU seconds per GiB."""
    agent, server = TunnelProtocol(Side.AGENT), TunnelProtocol(Side.SERVER)
    agent.initiate()
    server.initiate()
    exchange(agent, server)
    stream_id = agent.open_stream("example.com:443")
    exchange(agent, server)
    server.accept_stream(stream_id)
    exchange(agent, server)
    chunk = bytes(CHUNK)
    start = time.process_time()
    for _ in range(total // CHUNK):
        server.send(stream_id, chunk)
        for event in agent.receive_data(server.data_to_send()):
            if isinstance(event, DataReceived):
                agent.acknowledge(stream_id, len(event.data))
        server.receive_data(agent.data_to_send())
    return (time.process_time() - start) * (1 << 30) / total


def main() -> None:
    runs = sorted(cpu_seconds_per_gib() for _ in range(3))
    print(f"h2 layer, both sides: {runs[1]:.3f} CPU s per GiB (median of 3)")


if __name__ == "__main__":
    main()
