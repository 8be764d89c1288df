"""Measured figures for people (a table with ratios) and for programs (one JSON object).

Rows are BenchResults, so bench, compress and optimize print alike.
"""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from edgewise.measure import energy
from edgewise.measure.bench import BenchResult, BenchSettings, BenchTarget
from edgewise.measure.machine import describe


def bench_json(targets: list[BenchTarget], results: list[BenchResult], settings: BenchSettings) -> dict:
    return {
        "machine": describe(),
        "settings": {"threads": settings.threads, "batch_sizes": list(settings.batch_sizes),
                     "device_profile": asdict(energy.profile(settings.device)), "prices": asdict(settings.prices)},
        "baseline": targets[0].name,
        "results": [r.to_json() for r in results],
    }


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.2f} MB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.1f} KB"


def figures_table(rows: list[BenchResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("model", "batch", "p50 ms", "p90 ms", "p99 ms", "inf/s", "peak RSS MB", "size", "params",
                   "metric", "energy mJ/inf", "$/M inf", "g CO2e/M"):
        table.add_column(column, justify="left" if column == "model" else "right",
                         overflow="fold" if column == "model" else "ellipsis")
    for r in rows:
        metric = f"{r.metric.name} {r.metric.value:.4f}" if r.metric else "-"
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        latency = r.latency_ms
        table.add_row(r.model, str(r.batch), f"{latency.p50:.3f}", f"{latency.p90:.3f}",
                      f"{latency.p99:.3f}", f"{r.throughput_per_s:,.0f}", rss, _size(r.size_bytes),
                      f"{r.params:,}", metric, f"{r.energy_j * 1e3:.4f}", f"{r.cost_usd_per_million:.4f}",
                      f"{r.co2e_g_per_million:.2f}")
    return table


def ratio_table(rows: list[BenchResult], baseline: str) -> Table:
    table = Table(title=f"ratios against {baseline} (same run, interleaved); >1 means better", title_justify="left")
    for column in ("model", "batch", "speedup p50", "throughput", "smaller", "less energy", "metric change"):
        table.add_column(column, justify="left" if column == "model" else "right")
    base = {r.batch: r for r in rows if r.model == baseline}
    for r in rows:
        b = base[r.batch]
        change = f"{r.metric.value - b.metric.value:+.4f}" if r.metric and b.metric else "-"
        table.add_row(r.model, str(r.batch), f"{b.latency_ms.p50 / r.latency_ms.p50:.2f}x",
                      f"{r.throughput_per_s / b.throughput_per_s:.2f}x", f"{b.size_bytes / r.size_bytes:.2f}x",
                      f"{b.energy_j / r.energy_j:.2f}x" if r.energy_j else "-", change)
    return table


def energy_note(rows: list[BenchResult], device: str) -> str:
    if rows[0].energy_method == "estimate":
        profile = energy.profile(device)
        return (f"energy is an estimate: CPU time x {profile.watts_per_core} W per busy core "
                f"({profile.name}: {profile.basis}); no RAPL counters on this machine.")
    return "energy read from RAPL package counters (whole package, other processes included)."


def print_figures(rows: list[BenchResult], settings: BenchSettings, title: str, console: Console | None = None) -> None:
    """The figures table, ratios against the first model when there are several, and the energy method."""
    console = console or Console(width=160)
    console.print(figures_table(rows, title))
    if len({r.model for r in rows}) > 1:
        console.print(ratio_table(rows, rows[0].model))
    console.print(energy_note(rows, settings.device))


def bench_table(targets: list[BenchTarget], results: list[BenchResult], settings: BenchSettings,
                console: Console | None = None) -> None:
    console = console or Console(width=160)
    print_figures(results, settings,
                  f"edgewise bench: ONNX Runtime CPU, {settings.threads} threads", console)
    for t in targets:
        if t.export_max_abs_error is not None:
            console.print(f"{t.name}: exported from torch, ORT vs torch max abs error {t.export_max_abs_error:.2e}")
