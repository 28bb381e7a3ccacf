"""The tunnel-memory probe still runs on a few tunnels and names Fluidity's lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tunnel_memory_probe_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.tunnel_memory", "--tunnels", "20", "--top", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^Fluidity's own lines: +[\d,]+ B per tunnel$", done.stdout, re.M)
    listed = [line for line in done.stdout.splitlines() if "/fluidity/" in line]
    assert len(listed) == 3, done.stdout
