"""Soak Fluidity: 1,000 CONNECT tunnels churning through real agent and server processes.

    .venv/bin/python benchmarks/soak.py --minutes 10 [--tunnels 1000]

Prints a sample line every ``--every`` seconds (open tunnels, fds and RSS of
agent and server), then a summary; exits 1 if descriptors or memory did not
stay flat after warm-up, or if any tunnel failed. The engine is
``tests/support/soak.py`` (``pytest --soak`` runs the same 10 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fluidity.pki.certs import ensure_quickstart_pki
from support.soak import MIB, Sample, run_soak

# Each side needs one socket per open tunnel; the churn (hundreds of tunnels a second)
# adds the few closing as others open. A leak climbs past that and never comes back.
FD_TOLERANCE = 50
RSS_GROWTH_LIMIT = 16 * MIB


def show(sample: Sample) -> None:
    print(
        f"{sample.at:7.1f} s  open {sample.open_tunnels:5d}  done {sample.completed:7d}  "
        f"agent {sample.agent_fds:5d} fds {sample.agent_rss / MIB:6.1f} MiB  "
        f"server {sample.server_fds:5d} fds {sample.server_rss / MIB:6.1f} MiB",
        flush=True,
    )


async def main(minutes: float, tunnels: int, every: float) -> int:
    # SIGTERM and SIGINT (even when ignored, as for background jobs) end the soak
    # cleanly: the agent and server processes are stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    with tempfile.TemporaryDirectory(prefix="fluidity-soak-") as tmp:
        work = Path(tmp)
        pki = ensure_quickstart_pki(work / "pki")
        try:
            report = await run_soak(pki, work, minutes * 60, tunnels, every, on_sample=show)
        except asyncio.CancelledError:
            print("soak interrupted: agent and server stopped")
            return 130
    print(report.summary())
    problems = report.problems(FD_TOLERANCE, RSS_GROWTH_LIMIT)
    for problem in problems:
        print(f"NOT FLAT: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.minutes, args.tunnels, args.every)))
