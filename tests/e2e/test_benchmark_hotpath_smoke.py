"""The per-request benchmarks run end to end in smoke sizes and print every figure.

Like ``test_benchmark_smoke.py`` this never asserts a speed: only that
``benchmarks.http1_core`` measures the core and each parser, and that
``benchmarks.hotpath`` starts an agent and a server, measures both warm paths and
wrk's (or the asyncio stand-in's) req/s, and prints the table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_the_core_benchmark_measures_the_session_and_each_parser() -> None:
    output = run("benchmarks.http1_core", "--count", "200", "--repeat", "1")
    for label in ("session (ClientSession", "h11 request + h11 response", "httptools request"):
        assert label in output
    assert "own response framer" in output


def test_the_hotpath_benchmark_prints_every_figure() -> None:
    output = run(
        "benchmarks.hotpath", "--runs", "1", "--seconds", "1", "--count", "50", "--no-baseline"
    )
    for label in (
        "warm forward request p50",
        "warm tunnelled request p99",
        "req/s, 100 connections",
    ):
        assert label in output
