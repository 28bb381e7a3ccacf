"""The transports benchmark still runs (``--smoke``: tiny sizes); no speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "transports.py"


def test_transports_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "transports.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ws/direct" in done.stdout
    summary = json.loads(out.read_text())
    keys = {
        "download_mb_s",
        "upload_mb_s",
        "cpu_ms_per_mb",
        "connect_ms",
        "connect_p99_ms",
        "setup_ms",
    }
    for transport in ("direct", "websocket"):
        figures = summary[transport]
        assert set(figures) == keys
        assert all(value >= 0 for value in figures.values())
        assert figures["download_mb_s"] > 0 and figures["setup_ms"] > 0
    assert set(summary["websocket_over_direct"]) == keys
