"""Run every benchmark, side by side, in one run: ``python -m benchmarks.run [--smoke]``.

Starts the origin, then each available system in turn (direct, fluidity,
pproxy-plaintext, stunnel+tinyproxy), measures them all the same way, and writes
``benchmarks/results/latest.json`` and ``latest.md``: medians, and ratios to
the baselines measured in the same run. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import clients, report, systems, warm
from benchmarks.limits import raise_nofile

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to do."""

    mode: str
    latency_count: int
    latency_warmup: int
    load_connections: tuple[int, ...]
    load_seconds: float
    repeats: int
    bulk_bytes: int
    idle_tunnels: int
    idle_tunnels_baseline: int
    long_transfer_bytes: int
    # idle tunnels through one agent against a server at its default stream limit
    # (None) or a given one: the agent needs several tunnels (max_tunnels)
    many_idle_tunnels: int
    many_idle_stream_limit: int | None


FULL = Plan(
    mode="full",
    latency_count=2000,
    latency_warmup=100,
    load_connections=(100, 1000),
    load_seconds=5,
    repeats=3,
    bulk_bytes=256 * clients.MIB,
    idle_tunnels=10_000,
    # stunnel and tinyproxy spend a thread per connection: fewer suffice for a per-tunnel figure
    idle_tunnels_baseline=2_000,
    long_transfer_bytes=clients.GIB,
    many_idle_tunnels=5_000,
    many_idle_stream_limit=None,  # the server's default, 1,000 per tunnel
)

SMOKE = Plan(
    mode="smoke",
    latency_count=20,
    latency_warmup=3,
    load_connections=(10, 50),
    load_seconds=1,
    repeats=1,
    bulk_bytes=16 * clients.MIB,
    idle_tunnels=100,
    idle_tunnels_baseline=50,
    long_transfer_bytes=32 * clients.MIB,
    many_idle_tunnels=60,
    many_idle_stream_limit=25,  # three tunnels, as 5,000 need at the default 1,000
)

# Every system's results carry these keys (None where a metric does not apply).
METRICS = ("latency", "warm", "load", "bulk", "idle", "long_transfer")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = fit_to_nofile(SMOKE if args.smoke else FULL, raise_nofile())
    wanted = args.systems.split(",") if args.systems else list(systems.available())
    results = run(plan, wanted, log=print if not args.quiet else lambda *_: None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "latest.md").write_text(report.markdown(results))
    print(f"results: {out / 'latest.json'} and {out / 'latest.md'}")
    if not args.quiet:
        print(report.markdown(results))
    return 0


def fit_to_nofile(plan: Plan, nofile: int) -> Plan:
    """Hold no more idle tunnels than one process may have sockets (minus a margin)."""
    room = max(nofile - 256, 1)
    return replace(
        plan,
        idle_tunnels=min(plan.idle_tunnels, room),
        idle_tunnels_baseline=min(plan.idle_tunnels_baseline, room),
        many_idle_tunnels=min(plan.many_idle_tunnels, room),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, tiny sizes (CI)")
    parser.add_argument(
        "--systems", help="comma-separated subset of: " + ", ".join(systems.available())
    )
    parser.add_argument("--out", default=str(RESULTS), help="directory for latest.json/.md")
    parser.add_argument("--quiet", action="store_true", help="print only where results went")
    return parser.parse_args(argv)


def run(plan: Plan, wanted: list[str], log: Callable[..., None]) -> dict[str, Any]:
    """Measure each wanted system that is available; return the JSON-ready results."""
    found = systems.available()
    unknown = set(wanted) - set(found)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}: choose from {sorted(found)}")
    results: dict[str, Any] = {"meta": meta(plan), "systems": {}, "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="fluidity-bench-") as tmp, origin() as ports:
        workdir = Path(tmp)
        for name in wanted:
            if found[name]:
                results["skipped"][name] = found[name]
                log(f"== {name}: skipped ({found[name]})")
                continue
            log(f"== {name}")
            with start(name, workdir, plan) as system:
                before = os.getloadavg()[0]
                results["systems"][name] = measure(system, ports, plan, log)
                # Everything here is CPU-bound: what else ran shows in these.
                results["systems"][name]["load_average"] = [before, os.getloadavg()[0]]
            if name == "fluidity":
                results["systems"][name]["many_idle"] = many_idle(workdir, ports, plan, log)
    results["ratios"] = report.ratios(results["systems"])
    results["targets"] = report.targets(results["systems"], plan.idle_tunnels)
    return results


def many_idle(
    workdir: Path, ports: dict[str, int], plan: Plan, log: Callable[..., None]
) -> dict[str, Any]:
    """Idle tunnels through one agent against a server at its default stream limit,
    on fresh processes: how many were refused, what they cost, how many tunnels."""
    sub = workdir / "fluidity-many"
    sub.mkdir()
    limit = plan.many_idle_stream_limit
    with systems.fluidity(sub, idle=plan.many_idle_tunnels, stream_limit=limit) as system:
        assert system.proxy is not None
        result: dict[str, Any] = clients.idle_tunnels(
            system.proxy, ports["echo"], plan.many_idle_tunnels, system.pids
        )
        opened = system.logs["agent"].read_text(errors="replace").count("opened another")
    result["asked"] = plan.many_idle_tunnels
    result["stream_limit"] = limit or 1000
    result["tunnel_connections"] = 1 + opened
    log("  many idle tunnels", result)
    return result


def meta(plan: Plan) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "plan": asdict(plan),
    }


@contextlib.contextmanager
def origin() -> Iterator[dict[str, int]]:
    """The origin process; yields its ports. It exits when its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.origin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise systems.BenchmarkError("the origin process did not start")
        yield {name: int(port) for name, port in json.loads(line).items()}
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start(
    name: str, workdir: Path, plan: Plan
) -> contextlib.AbstractContextManager[systems.System]:
    sub = workdir / name.replace("+", "-")
    sub.mkdir()
    if name == "direct":
        return systems.direct(sub)
    if name == "fluidity":
        return systems.fluidity(sub, idle=plan.idle_tunnels)
    if name == "pproxy-plaintext":
        return systems.pproxy(sub, idle=plan.idle_tunnels_baseline)
    return systems.stunnel_tinyproxy(sub, idle=plan.idle_tunnels_baseline)


def measure(
    system: systems.System, ports: dict[str, int], plan: Plan, log: Callable[..., None]
) -> dict[str, Any]:
    """Every metric for one system, in a fixed order; medians over ``plan.repeats``."""
    proxy, pids = system.proxy, system.pids
    result: dict[str, Any] = {"notes": system.notes}
    # Idle tunnels first, on fresh processes: their cost, not the heap left
    # behind by the load tests (rss_after_all_mb at the end shows that).
    result["idle"] = (
        clients.idle_tunnels(proxy, ports["echo"], system.max_idle, pids)
        if proxy is not None and system.max_idle
        else None
    )
    log("  idle", result["idle"])
    result["latency"] = clients.latency(
        proxy, ports["http"], plan.latency_count, plan.latency_warmup
    )
    log("  latency", result["latency"])
    result["warm"] = warm.warm_latency(
        proxy, ports["http"], plan.latency_count, plan.latency_warmup
    )
    log("  warm", result["warm"])
    result["load"] = {}
    for connections in plan.load_connections:
        runs = [
            clients.requests_per_second(proxy, ports["http"], connections, plan.load_seconds)
            for _ in range(plan.repeats)
        ]
        result["load"][str(connections)] = {
            "rps": clients.median_of([float(r["rps"]) for r in runs]),  # type: ignore[arg-type]
            "runs": [r["rps"] for r in runs],
            "errors": sum(int(r["errors"]) for r in runs),  # type: ignore[call-overload]
            "p99_ms": _median_or_none([r["p99_ms"] for r in runs]),
            "tool": runs[0]["tool"],
        }
        log(f"  load at {connections} connections", result["load"][str(connections)])
    bulk = [
        clients.bulk_measured(proxy, ports["source"], plan.bulk_bytes, pids)
        for _ in range(plan.repeats)
    ]
    result["bulk"] = {
        "bytes": plan.bulk_bytes,
        "mb_s": round(clients.median_of([b["mb_s"] for b in bulk]), 1),
        "runs_mb_s": [round(b["mb_s"], 1) for b in bulk],
        "cpu_s_per_gib": round(clients.median_of([b["cpu_s_per_gib"] for b in bulk]), 2)
        if pids
        else None,
    }
    log("  bulk", result["bulk"])
    result["long_transfer"] = (
        clients.transfer_with_rss(proxy, ports["source"], plan.long_transfer_bytes, pids)
        if pids
        else None
    )
    log("  long transfer", result["long_transfer"])
    result["rss_after_all_mb"] = round(clients.rss_bytes(pids) / clients.MB, 1) if pids else None
    return result


def _median_or_none(values: list[object]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return clients.median_of(numbers) if numbers else None


if __name__ == "__main__":
    sys.exit(main())
