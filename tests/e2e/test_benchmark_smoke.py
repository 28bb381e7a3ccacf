"""The benchmark suite's smoke mode runs end to end and reports every metric.

It never asserts a speed (that is the benchmark's job, not a unit test's): only
that one command starts every available system, measures each metric, and
writes the JSON and Markdown results.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("latency", "warm", "load", "bulk", "idle", "long_transfer")
PROXIED_METRICS = {
    "latency": ("p50_ms", "p99_ms"),
    "bulk": ("mb_s", "cpu_s_per_gib"),
    "idle": ("tunnels", "rss_total_mb", "rss_per_tunnel_kib"),
    "long_transfer": ("mb_s", "rss_start_mb", "rss_peak_mb", "growth_mb"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--quiet", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    loaded: dict[str, object] = json.loads((out / "latest.json").read_text())
    loaded["markdown"] = (out / "latest.md").read_text()
    return loaded


def test_every_system_reports_every_metric(results: dict[str, object]) -> None:
    systems = results["systems"]
    assert isinstance(systems, dict)
    assert {"direct", "fluidity"} <= set(systems)
    for name, measured in systems.items():
        assert set(METRICS) <= set(measured), name
        assert measured["latency"]["p50_ms"] > 0
        assert len(measured["load"]) == 2
        for load in measured["load"].values():
            assert load["rps"] > 0
            assert load["p99_ms"] > 0
        assert measured["bulk"]["mb_s"] > 0
        assert measured["warm"]["tunnel"]["p50_ms"] > 0


def test_the_proxies_report_cpu_and_memory(results: dict[str, object]) -> None:
    systems = results["systems"]
    assert isinstance(systems, dict)
    proxied = [name for name in systems if name != "direct"]
    assert "fluidity" in proxied
    for name in proxied:
        for metric, keys in PROXIED_METRICS.items():
            for key in keys:
                assert systems[name][metric][key] is not None, (name, metric, key)


def test_the_c_baseline_runs_when_installed(results: dict[str, object]) -> None:
    installed = shutil.which("stunnel4") and shutil.which("tinyproxy")
    where = results["systems"] if installed else results["skipped"]
    assert isinstance(where, dict)
    assert "stunnel+tinyproxy" in where


def test_the_python_peer_runs_when_installed(results: dict[str, object]) -> None:
    where = results["systems"] if importlib.util.find_spec("pproxy") else results["skipped"]
    assert isinstance(where, dict)
    assert "pproxy-plaintext" in where


def test_idle_tunnels_beyond_one_tunnels_stream_limit_are_all_held(
    results: dict[str, object],
) -> None:
    """The smoke plan asks for 60 at 25 streams per tunnel: the agent opens three."""
    systems = results["systems"]
    assert isinstance(systems, dict)
    many = systems["fluidity"]["many_idle"]
    assert many["refused"] == 0 and many["tunnels"] == many["asked"]
    assert many["tunnel_connections"] == 3


def test_ratios_targets_and_table_are_written(results: dict[str, object]) -> None:
    ratios = results["ratios"]
    assert isinstance(ratios, dict) and "direct" in ratios
    assert "one CONNECT stream, bulk (MB/s)" in ratios["direct"]
    systems = results["systems"]
    targets = results["targets"]
    assert isinstance(systems, dict) and isinstance(targets, list) and len(targets) == 13
    for t in targets:  # measured unless it is a ratio to a baseline that did not run
        assert (t["measured"] is None) == (t["needs"] is not None and t["needs"] not in systems)
        assert t["met"] in (True, False, None)
    markdown = results["markdown"]
    assert isinstance(markdown, str)
    assert "| metric | direct | fluidity" in markdown
    assert "| target | measured | met |" in markdown
    assert "socket errors at 50 connections" in markdown
    assert "60 idle tunnels at 25 streams per tunnel: refused" in markdown
