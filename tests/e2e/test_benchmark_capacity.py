"""``benchmarks.capacity --smoke`` runs end to end and reports every per-server figure.

No speed is asserted (docs/aws.md quotes a full run): only that each figure the
capacity planning uses is measured and positive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "requests": ("server_cpu_us_per_request", "server_rps_per_vcpu"),
    "new_streams": ("server_cpu_us_per_new_stream", "server_new_streams_per_s_per_vcpu"),
    "bulk": ("server_cpu_s_per_gib", "server_mb_s_per_vcpu"),
    "tunnels": ("tunnels", "server_kib_per_tunnel"),
}


def test_the_capacity_smoke_run_measures_every_figure() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.capacity", "--smoke", "--tunnels", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(run.stdout)
    for section, keys in FIGURES.items():
        for key in keys:
            assert results[section][key] > 0, (section, key, results[section])
