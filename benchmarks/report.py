"""Ratios to the in-run baselines, the targets, and the Markdown table."""

from __future__ import annotations

from typing import Any

from benchmarks.targets import lookup, targets

__all__ = ["lookup", "markdown", "ratios", "targets"]

SUBJECT = "fluidity"
BASELINES = ("direct", "pproxy-plaintext", "stunnel+tinyproxy")

# (label, path into a system's results, higher is better)
ROWS: list[tuple[str, tuple[str, ...], bool]] = [
    ("new connection + small GET, p50 (ms)", ("latency", "p50_ms"), False),
    ("new connection + small GET, p99 (ms)", ("latency", "p99_ms"), False),
    ("warm request in an open CONNECT tunnel, p50 (ms)", ("warm", "tunnel", "p50_ms"), False),
    ("warm request in an open CONNECT tunnel, p99 (ms)", ("warm", "tunnel", "p99_ms"), False),
    (
        "warm forwarded request (absolute-form, keep-alive), p50 (ms)",
        ("warm", "forward", "p50_ms"),
        False,
    ),
    ("req/s, first concurrency", ("load", "#0", "rps"), True),
    ("p99, first concurrency", ("load", "#0", "p99_ms"), False),
    ("req/s, second concurrency", ("load", "#1", "rps"), True),
    ("p99, second concurrency", ("load", "#1", "p99_ms"), False),
    ("socket errors, second concurrency", ("load", "#1", "errors"), False),
    ("one CONNECT stream, bulk (MB/s)", ("bulk", "mb_s"), True),
    ("CPU s per GiB, proxy processes", ("bulk", "cpu_s_per_gib"), False),
    ("RSS per idle tunnel (KiB)", ("idle", "rss_per_tunnel_kib"), False),
    ("RSS with the idle tunnels open (MB)", ("idle", "rss_total_mb"), False),
    ("many idle tunnels at the default stream limit: refused", ("many_idle", "refused"), False),
    (
        "many idle tunnels at the default stream limit: RSS (MB)",
        ("many_idle", "rss_total_mb"),
        False,
    ),
    (
        "many idle tunnels at the default stream limit: tunnels",
        ("many_idle", "tunnel_connections"),
        False,
    ),
    ("long transfer: RSS growth (MB)", ("long_transfer", "growth_mb"), False),
    ("RSS after all the runs (MB)", ("rss_after_all_mb",), False),
]
# Rows whose ratio says nothing (counts, not costs).
NO_RATIO = {
    "socket errors, second concurrency",
    "many idle tunnels at the default stream limit: refused",
    "many idle tunnels at the default stream limit: tunnels",
}

# The figures quoted in the performance issue, measured elsewhere (2-core machine, loopback).
REFERENCE = [
    ("original Go implementation", "1.44 / 5.21", "2,829", "24.6", "66"),
    ("stunnel + tinyproxy (C)", "4.48 / 6.51", "418", "244", "211"),
    ("300-line Python + uvloop prototype", "1.74 / 2.55", "5,016", "187", "12"),
]


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
            if mine is not None and theirs and label not in NO_RATIO:
                row[label] = round(mine / theirs, 3)
        out[baseline] = row
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
        met = {True: "met", False: "**not met**", None: "—"}[t["met"]]
        if t["met"] is None and t.get("needs"):
            met = f"— ({t['needs']} did not run)"
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
    if path[0] == "many_idle":
        many = (systems.get(SUBJECT) or {}).get("many_idle") or {}
        return label.replace("many", f"{many.get('asked', 0):,}", 1).replace(
            "the default stream limit", f"{many.get('stream_limit', 0):,} streams per tunnel"
        )
    if path[0] == "load":
        for result in systems.values():
            keys = list((result.get("load") or {}).keys())
            index = int(path[1][1:])
            if index < len(keys):
                tool = result["load"][keys[index]]["tool"]
                what = label.split(",")[0]
                return f"{what} at {keys[index]} connections ({tool})" + (
                    " (ms)" if what == "p99" else ""
                )
    return label


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _idle_note(systems: dict[str, Any]) -> list[str]:
    held = [
        f"{n}: {s['idle']['tunnels']:,}" for n, s in systems.items() if s.get("idle") is not None
    ]
    return [f"Idle tunnels held: {', '.join(held)}.", ""] if held else []
