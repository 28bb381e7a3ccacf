"""Corporate paths side by side: the tunnel direct vs through squid (Basic, NTLM), SOCKS5 vs
HTTP, and a direct: route vs the tunnel. Loopback only; prints a table.

    .venv/bin/python benchmarks/corporate.py [--mib 256] [--connects 10]

Needs curl and squid (apt-get install curl squid). Numbers are wall-clock on this
machine: compare rows with each other, not with other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.pki.certs import ensure_quickstart_pki
from support.harness import Tunnel, start_tunnel
from support.origins import RecordingOrigin
from support.squidfix import run_squid

TIMEOUT = 120.0  # seconds: the bound on each measured step


async def curl_seconds(*args: str) -> float:
    """Run curl to /dev/null; return its wall time, failing loudly on an error."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--fail", "--noproxy", "", "-o", "/dev/null", *args
    )
    async with asyncio.timeout(TIMEOUT):
        code = await proc.wait()
    if code != 0:
        raise SystemExit(f"curl {' '.join(args)} failed with {code}")
    return time.perf_counter() - start


async def connect_ms(tunnel: Tunnel, count: int) -> float:
    """Median time for the keeper to bring a fresh tunnel up (path, proxy auth, TLS, h2)."""
    samples = []
    for _ in range(count):
        old = tunnel.agent.keeper.connection
        assert old is not None
        start = time.perf_counter()
        old.close_now("benchmark: reconnect")
        async with asyncio.timeout(TIMEOUT):
            while tunnel.agent.keeper.connection is old:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            await tunnel.agent.keeper.wait_ready(within=TIMEOUT)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


Row = tuple[str, Callable[[], Awaitable[Tunnel]], list[str]]


async def main(mib: int, connects: int) -> None:
    pki = ensure_quickstart_pki(Path(tempfile.mkdtemp(prefix="fluidity-bench-")))
    origin = await RecordingOrigin().start()
    size = mib * 1024 * 1024
    url = f"{origin.url}/bytes/{size}"
    print(f"{'path':<44} {'connect ms':>10} {'MiB/s':>8}")
    with (
        run_squid(basic_users={"alice": "s3cret"}) as basic,
        run_squid(ntlm=True) as ntlm,
    ):
        basic_proxy = UpstreamProxyConfig(basic.url, username="alice", password="s3cret")
        ntlm_proxy = UpstreamProxyConfig(ntlm.url, username="CORP\\alice", password="x")
        rows: list[tuple[str, dict[str, object], str]] = [
            ("tunnel, no proxy, HTTP forward", {}, "-x"),
            ("tunnel, no proxy, SOCKS5", {}, "--socks5-hostname"),
            ("tunnel via squid Basic, HTTP forward", {"upstream_proxy": basic_proxy}, "-x"),
            ("tunnel via squid NTLM, HTTP forward", {"upstream_proxy": ntlm_proxy}, "-x"),
            ("direct: route, no proxy", {"direct": ("127.0.0.1",)}, "-x"),
            (
                "direct: route via squid Basic",
                {"direct": ("127.0.0.1",), "upstream_proxy": basic_proxy},
                "-x",
            ),
        ]
        for name, changes, flag in rows:
            tunnel = await start_tunnel(pki, **changes)
            try:
                proxy = f"127.0.0.1:{tunnel.proxy_port}"
                proxy_arg = f"http://{proxy}" if flag == "-x" else proxy
                setup = await connect_ms(tunnel, connects)
                seconds = await curl_seconds(flag, proxy_arg, url)
                print(f"{name:<44} {setup:>10.1f} {mib / seconds:>8.0f}", flush=True)
            finally:
                await tunnel.close()
    await origin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="bytes to download per row, MiB")
    parser.add_argument("--connects", type=int, default=10, help="tunnel reconnects to time")
    options = parser.parse_args()
    logging.getLogger("fluidity").setLevel(logging.ERROR)  # the reconnects are on purpose
    asyncio.run(main(options.mib, options.connects))
