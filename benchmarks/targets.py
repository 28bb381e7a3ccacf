"""The performance targets, each with Fluidity's figure in the run and met / not met.

The targets of issue 14 (most are ratios to a baseline measured in the same
run, so a loaded machine moves both sides), and the earlier absolute ones
that still hold. A target whose baseline did not run has no figure (``met``
is None): the ``needs`` key names the system it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUBJECT = "fluidity"
C_CHAIN = "stunnel+tinyproxy"
PYTHON_PEER = "pproxy-plaintext"


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    bound: float
    higher_is_better: bool
    needs: str | None = None  # the baseline system the figure is a ratio to

    def as_dict(self) -> dict[str, Any]:
        met = None
        if self.measured is not None:
            met = (
                self.measured >= self.bound
                if self.higher_is_better
                else self.measured <= self.bound
            )
        return {"target": self.name, "measured": self.measured, "met": met, "needs": self.needs}


def lookup(result: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    """The number at ``path``; ``#i`` picks the i-th entry of a dict (``#-1`` the last).
    None if absent."""
    value: Any = result
    for key in path:
        if not isinstance(value, dict):
            return None
        if key.startswith("#"):
            items = list(value.values())
            index = int(key[1:])
            value = items[index] if -len(items) <= index < len(items) else None
        else:
            value = value.get(key)
    return float(value) if isinstance(value, int | float) else None


def _ratio(mine: float | None, theirs: float | None) -> float | None:
    return None if mine is None or not theirs else round(mine / theirs, 3)


def targets(systems: dict[str, Any], idle: int) -> list[dict[str, Any]]:
    """Every target, in the order of the issue."""
    s = systems.get(SUBJECT)
    c, py = systems.get(C_CHAIN), systems.get(PYTHON_PEER)
    loads = list((s or {}).get("load") or {"100": None, "1000": None})
    few, many = loads[0], loads[-1]
    warm = ("warm", "tunnel", "p50_ms")
    new = ("latency", "p50_ms")
    rps = ("load", "#0", "rps")
    p99_few, p99_many = lookup(s, ("load", "#0", "p99_ms")), lookup(s, ("load", "#-1", "p99_ms"))
    many_idle = (s or {}).get("many_idle") or {}
    asked = many_idle.get("asked", 0)
    checks = [
        Target(
            f"warm request p50 <= {C_CHAIN}'s (ratio)",
            _ratio(lookup(s, warm), lookup(c, warm)),
            1.0,
            False,
            C_CHAIN,
        ),
        Target(
            f"new connection + GET p50 <= 0.5x {C_CHAIN}'s (ratio)",
            _ratio(lookup(s, new), lookup(c, new)),
            0.5,
            False,
            C_CHAIN,
        ),
        Target("new connection + GET p50 <= 1.0 ms", lookup(s, new), 1.0, False),
        Target(f"req/s at {few} connections >= 8,000", lookup(s, rps), 8000, True),
        Target(
            f"req/s at {few} connections >= 0.8x {PYTHON_PEER}'s (ratio)",
            _ratio(lookup(s, rps), lookup(py, rps)),
            0.8,
            True,
            PYTHON_PEER,
        ),
        Target(
            f"{many} connections: socket errors = 0",
            lookup(s, ("load", "#-1", "errors")),
            0,
            False,
        ),
        Target(
            f"{many} connections: p99 <= 3x the p99 at {few} (ratio)",
            _ratio(p99_many, p99_few),
            3.0,
            False,
        ),
        Target(
            f"{asked:,} idle tunnels through one agent: refused = 0",
            lookup(s, ("many_idle", "refused")),
            0,
            False,
        ),
        Target(
            f"{asked:,} idle tunnels through one agent: agent + server RSS < 120 MB",
            lookup(s, ("many_idle", "rss_total_mb")),
            120,
            False,
        ),
        Target("one-stream bulk >= 500 MB/s", lookup(s, ("bulk", "mb_s")), 500, True),
        Target("<= 10 KiB per idle tunnel", lookup(s, ("idle", "rss_per_tunnel_kib")), 10, False),
        Target(
            f"agent + server RSS with {idle:,} idle tunnels < 150 MB",
            lookup(s, ("idle", "rss_total_mb")),
            150,
            False,
        ),
        Target(
            "flat memory during the long transfer (growth < 32 MB)",
            lookup(s, ("long_transfer", "growth_mb")),
            32,
            False,
        ),
    ]
    return [check.as_dict() for check in checks]
