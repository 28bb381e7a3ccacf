"""Ratios to the in-run baselines, the targets, and the Markdown table."""

from __future__ import annotations

from typing import Any

SUBJECT = "fluidity"
BASELINES = ("direct", "stunnel+tinyproxy")

# (label, path into a system's results, higher is better)
ROWS: list[tuple[str, tuple[str, ...], bool]] = [
    ("new connection + small GET, p50 (ms)", ("latency", "p50_ms"), False),
    ("new connection + small GET, p99 (ms)", ("latency", "p99_ms"), False),
    ("req/s, first concurrency", ("load", "#0", "rps"), True),
    ("req/s, second concurrency", ("load", "#1", "rps"), True),
    ("one CONNECT stream, bulk (MB/s)", ("bulk", "mb_s"), True),
    ("CPU s per GiB, proxy processes", ("bulk", "cpu_s_per_gib"), False),
    ("RSS per idle tunnel (KiB)", ("idle", "rss_per_tunnel_kib"), False),
    ("RSS with the idle tunnels open (MB)", ("idle", "rss_total_mb"), False),
    ("long transfer: RSS growth (MB)", ("long_transfer", "growth_mb"), False),
    ("RSS after all the runs (MB)", ("rss_after_all_mb",), False),
]

# The figures quoted in the performance issue, measured elsewhere (2-core machine, loopback).
REFERENCE = [
    ("original Go implementation", "1.44 / 5.21", "2,829", "24.6", "66"),
    ("stunnel + tinyproxy (C)", "4.48 / 6.51", "418", "244", "211"),
    ("300-line Python + uvloop prototype", "1.74 / 2.55", "5,016", "187", "12"),
]


def lookup(result: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    """The number at ``path``; ``#i`` picks the i-th entry of a dict. None if absent."""
    value: Any = result
    for key in path:
        if not isinstance(value, dict):
            return None
        if key.startswith("#"):
            items = list(value.values())
            index = int(key[1:])
            value = items[index] if index < len(items) else None
        else:
            value = value.get(key)
    return float(value) if isinstance(value, int | float) else None


def ratios(systems: dict[str, Any]) -> dict[str, dict[str, float]]:
    """fluidity's figure divided by each baseline's, per row, where both exist."""
    subject = systems.get(SUBJECT)
    out: dict[str, dict[str, float]] = {}
    for baseline in BASELINES:
        if subject is None or baseline not in systems:
            continue
        row: dict[str, float] = {}
        for label, path, _ in ROWS:
            mine, theirs = lookup(subject, path), lookup(systems[baseline], path)
            if mine is not None and theirs:
                row[label] = round(mine / theirs, 3)
        out[baseline] = row
    return out


def targets(systems: dict[str, Any], idle: int) -> list[dict[str, Any]]:
    """The issue's targets, each with fluidity's measured figure and whether it is met."""
    s = systems.get(SUBJECT)
    long = (s or {}).get("long_transfer") or {}
    first_load = next(iter((s or {}).get("load") or {"100": None}))
    checks = [
        ("new-connection latency p50 <= 1.0 ms", lookup(s, ("latency", "p50_ms")), 1.0, False),
        (
            f"req/s at {first_load} connections >= 8,000",
            lookup(s, ("load", "#0", "rps")),
            8000,
            True,
        ),
        ("single-stream CONNECT >= 300 MB/s", lookup(s, ("bulk", "mb_s")), 300, True),
        (
            f"agent + server RSS with {idle:,} idle tunnels < 150 MB",
            lookup(s, ("idle", "rss_total_mb")),
            150,
            False,
        ),
        (
            f"flat memory during {long.get('bytes', 0) / (1 << 30):g} GiB (growth < 32 MB)",
            lookup(s, ("long_transfer", "growth_mb")),
            32,
            False,
        ),
    ]
    out = []
    for name, measured, bound, higher in checks:
        met = None if measured is None else (measured >= bound if higher else measured <= bound)
        out.append({"target": name, "measured": measured, "met": met})
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown: the side-by-side table, ratios, targets, reference figures."""
    systems = results["systems"]
    names = list(systems)
    ratio_cols = [b for b in BASELINES if b in results["ratios"]]
    head = ["metric", *names, *(f"{SUBJECT} / {b}" for b in ratio_cols)]
    lines = [
        f"Benchmark run {results['meta']['date']} ({results['meta']['plan']['mode']} mode), "
        f"{results['meta']['machine']}, Python {results['meta']['python']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, path, _ in ROWS:
        shown = _label(label, path, systems)
        cells = [_fmt(lookup(systems[n], path)) for n in names]
        cells += [_ratio(results["ratios"][b].get(label)) for b in ratio_cols]
        lines.append("| " + " | ".join([shown, *cells]) + " |")
    lines += [
        "",
        "Ratios are fluidity's figure over the baseline's (latency, CPU, RSS: lower is "
        "better; req/s, MB/s: higher is better). Medians of the repeats; MB = 10^6 bytes.",
        "",
    ]
    lines += _idle_note(systems)
    lines += ["| target | measured | met |", "|---|---|---|"]
    for t in results["targets"]:
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        lines.append(f"| {t['target']} | {_fmt(t['measured'])} | {met} |")
    if results.get("skipped"):
        lines += ["", *(f"- {n}: {why}" for n, why in results["skipped"].items())]
    notes = [f"- {n}: {s['notes']}" for n, s in systems.items() if s.get("notes")]
    notes += [
        f"- {n}: machine load average {s['load_average'][0]:.1f} at the start, "
        f"{s['load_average'][1]:.1f} at the end"
        for n, s in systems.items()
        if s.get("load_average")
    ]
    lines += ["", *notes] if notes else []
    lines += [
        "",
        "Reference figures from the performance issue (another run, not comparable digit for "
        "digit):",
        "",
        "| config | new conn + GET p50 / p99 (ms) | req/s at 100 | bulk MB/s "
        "| KiB per idle tunnel |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in REFERENCE),
        "",
    ]
    return "\n".join(lines)


def _label(label: str, path: tuple[str, ...], systems: dict[str, Any]) -> str:
    if path[0] == "load":
        for result in systems.values():
            keys = list((result.get("load") or {}).keys())
            index = int(path[1][1:])
            if index < len(keys):
                tool = result["load"][keys[index]]["tool"]
                return f"req/s at {keys[index]} connections ({tool})"
    return label


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _idle_note(systems: dict[str, Any]) -> list[str]:
    held = [
        f"{n}: {s['idle']['tunnels']:,}" for n, s in systems.items() if s.get("idle") is not None
    ]
    return [f"Idle tunnels held: {', '.join(held)}.", ""] if held else []
