"""Bench results for people (a table with ratios) and for programs (one JSON object)."""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from edgewise.measure import energy
from edgewise.measure.bench import BenchResult, BenchSettings, BenchTarget
from edgewise.measure.machine import describe


def bench_json(targets: list[BenchTarget], results: list[BenchResult], settings: BenchSettings) -> dict:
    exports = {t.name: t.export_max_abs_error for t in targets}
    return {
        "machine": describe(),
        "settings": {"threads": settings.threads, "batch_sizes": list(settings.batch_sizes),
                     "device_profile": asdict(energy.profile(settings.device)), "prices": asdict(settings.prices)},
        "baseline": targets[0].name,
        "results": [{**r.to_json(), "export_max_abs_error": exports[r.model]} for r in results],
    }


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.2f} MB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.1f} KB"


def bench_table(targets: list[BenchTarget], results: list[BenchResult], settings: BenchSettings,
                console: Console | None = None) -> None:
    console = console or Console(width=160)
    table = Table(title=f"edgewise bench: ONNX Runtime CPU, {settings.threads} threads", title_justify="left")
    for column in ("model", "batch", "p50 ms", "p90 ms", "p99 ms", "inf/s", "peak RSS MB", "size", "params",
                   "metric", "energy mJ/inf", "$/M inf", "g CO2e/M"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        metric = f"{r.metric['name']} {r.metric['value']:.4f}" if r.metric else "-"
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        table.add_row(r.model, str(r.batch), f"{r.latency_ms['p50']:.3f}", f"{r.latency_ms['p90']:.3f}",
                      f"{r.latency_ms['p99']:.3f}", f"{r.throughput_per_s:,.0f}", rss, _size(r.size_bytes),
                      f"{r.params:,}", metric, f"{r.energy_j * 1e3:.4f}", f"{r.cost_usd_per_million:.4f}",
                      f"{r.co2e_g_per_million:.2f}")
    console.print(table)
    if len(targets) > 1:
        console.print(_ratio_table(results, targets[0].name))
    method = results[0].energy_method
    if method == "estimate":
        profile = energy.profile(settings.device)
        console.print(f"energy is an estimate: CPU time x {profile.watts_per_core} W per busy core "
                      f"({profile.name}: {profile.basis}); no RAPL counters on this machine.")
    else:
        console.print("energy read from RAPL package counters (whole package, other processes included).")
    for t in targets:
        if t.export_max_abs_error is not None:
            console.print(f"{t.name}: exported from torch, ORT vs torch max abs error {t.export_max_abs_error:.2e}")


def _ratio_table(results: list[BenchResult], baseline: str) -> Table:
    table = Table(title=f"ratios against {baseline} (same run, interleaved); >1 means better", title_justify="left")
    for column in ("model", "batch", "speedup p50", "throughput", "smaller", "less energy", "metric change"):
        table.add_column(column, justify="left" if column == "model" else "right")
    base = {r.batch: r for r in results if r.model == baseline}
    for r in results:
        b = base[r.batch]
        change = (f"{r.metric['value'] - b.metric['value']:+.4f}" if r.metric and b.metric else "-")
        table.add_row(r.model, str(r.batch), f"{b.latency_ms['p50'] / r.latency_ms['p50']:.2f}x",
                      f"{r.throughput_per_s / b.throughput_per_s:.2f}x", f"{b.size_bytes / r.size_bytes:.2f}x",
                      f"{b.energy_j / r.energy_j:.2f}x" if r.energy_j else "-", change)
    return table
