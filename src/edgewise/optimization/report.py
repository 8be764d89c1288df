"""The optimize report: self-contained HTML (inline SVG plots, no scripts, works offline), Markdown,
card.json and candidates.json."""

from __future__ import annotations

import html
import io
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

from edgewise.compression.recipe import compressed_size  # noqa: E402
from edgewise.files import atomic_path, write_json, write_text  # noqa: E402
from edgewise.measure import energy  # noqa: E402
from edgewise.measure.bench import BenchResult  # noqa: E402
from edgewise.measure.machine import accuracy_holds_for, describe  # noqa: E402
from edgewise.optimization.run import PEER, SENSITIVITY_SAMPLES, OptimizeResult, pareto  # noqa: E402


def _mb(num_bytes: float) -> float:
    return num_bytes / 2**20


def _plot(result: OptimizeResult, x_key: str) -> str:
    """Metric against latency or size for every trial: Pareto front, chosen, baseline, peer."""
    latency = x_key == "latency"
    x_of = (lambda f: f.latency_ms.p50) if latency else (lambda f: _mb(f.size_bytes))
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    trials = result.trials
    ax.scatter([x_of(t.figures) for t in trials], [t.metric for t in trials],
               c=["#2b8a3e" if t.feasible else "#adb5bd" for t in trials], s=28,
               label="candidates, validation (green: within constraints)")
    front = sorted(pareto(trials, "latency" if latency else "size"), key=lambda t: x_of(t.figures))
    ax.plot([x_of(t.figures) for t in front], [t.metric for t in front], "-", color="#2b8a3e",
            lw=1, label="Pareto front")
    for name, marker, color, label in ((result.finalists[0].name, "s", "#1c7ed6", "ORT fp32 baseline"),
                                       (PEER, "D", "#f08c00", "ORT quantize_dynamic default"),
                                       (result.chosen.recipe, "*", "#e03131", "chosen")):
        candidate = result.finalist(name)
        if candidate and candidate.validation_metric is not None:  # on the axis the trials are plotted on
            ax.scatter([x_of(candidate.figures)], [candidate.validation_metric], marker=marker,
                       s=160 if marker == "*" else 60,
                       color=color, edgecolor="black", zorder=5, label=label)
    ax.set_xlabel("batch-1 p50 latency (ms, ONNX Runtime)" if latency else "model size (MB)")
    if not latency:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(f"{result.task.metric.name} (validation)")
    ax.set_title(f"{result.task.metric.name} vs {'latency' if latency else 'size'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def _summary_rows(result: OptimizeResult) -> list[list[str]]:
    base = result.baseline
    rows = []
    for candidate in result.finalists:
        f = candidate.figures
        validation = f"{candidate.validation_metric:.4f}" if candidate.validation_metric is not None else "-"
        rows.append([candidate.name + (" (chosen)" if candidate.name == result.chosen.recipe else ""),
                     validation, f"{f.metric.value:.4f}", f"{f.latency_ms.p50:.3f}", f"{f.latency_ms.p99:.3f}",
                     f"{base.latency_ms.p50 / f.latency_ms.p50:.2f}x", f"{_mb(f.size_bytes):.3f}",
                     f"{base.size_bytes / f.size_bytes:.2f}x", f"{f.params:,}"])
    return rows


SUMMARY_HEADER = ["model", "metric, validation", "metric, held-out", "p50 ms", "p99 ms", "speedup", "size MB",
                  "smaller", "params"]
ENERGY_HEADER = ["model", "energy mJ/inference", "method", "$ per million", "g CO2e per million"]
TRIALS_HEADER = ["trial", "recipe", "metric (validation)", "drop", "p50 ms", "size MB", "energy mJ",
                 "within constraints", "worker"]


def _energy_rows(result: OptimizeResult) -> list[list[str]]:
    return [[c.name, f"{c.figures.energy_j * 1e3:.4f}", c.figures.energy_method,
             f"{c.figures.cost_usd_per_million:.4f}", f"{c.figures.co2e_g_per_million:.3f}"]
            for c in result.finalists]


def _trial_rows(result: OptimizeResult) -> list[list[str]]:
    return [[str(t.number), t.recipe, f"{t.metric:.4f}", f"{t.drop:.3f}",
             f"{t.figures.latency_ms.p50:.3f}", f"{_mb(t.figures.size_bytes):.3f}",
             f"{t.figures.energy_j * 1e3:.4f}", "yes" if t.feasible else "no", t.worker or "-"]
            for t in sorted(result.trials, key=lambda t: t.number)]


def _headline(result: OptimizeResult) -> list[str]:
    c = result.constraints
    lines = [f"Task **{result.task.name}**, metric {result.task.metric.name}; objective: lowest "
             f"{result.settings.objective}; constraints: drop <= {c.tolerance}"
             + (f", size <= {c.max_size_mb} MB" if c.max_size_mb else "")
             + (f", {'estimated latency on ' + c.target if c.target else 'p50'} <= {c.max_latency_ms} ms"
                if c.max_latency_ms else "")
             + (f", RAM on {c.target} <= {c.max_ram_mb} MB" if c.max_ram_mb else "")
             + (f"; every candidate must fit {c.target}" if c.target else "") + ".",
             f"Chosen: **{result.chosen.recipe}** after {len(result.trials)} trials: drop {result.chosen.drop:.3f} on "
             f"the validation split the search used, **{result.held_out_drop:.3f} on held-out data** no trial touched "
             "(the figure to trust)."]
    workers = sorted({t.worker for t in result.trials if t.worker})
    if len(workers) > 1:
        lines.append(f"The study was shared by {len(workers)} workers ({', '.join(workers)}); every trial "
                     "of it is here, each recipe run once.")
    if result.without_target:
        same = result.without_target == result.chosen.recipe
        lines.append(f"On this machine's own measurements instead of the estimates on {c.target}, the same trials "
                     f"would have chosen {'the same model' if same else '**' + result.without_target + '**'}"
                     + ("." if same else f": the device's budget is what changed the choice (see 'On {c.target}')."))
    if result.disagreement:
        lines.append(f"**Warning:** {result.disagreement}.")
    if result.message:
        lines.append(result.message)
    if result.interrupted:
        lines.append("The search was interrupted: this is the best found so far.")
    if result.baseline.energy_method == "estimate":
        profile = energy.profile(energy.DEFAULT_PROFILE)
        lines.append(f"Energy is an estimate (no RAPL here): CPU time x {profile.watts_per_core} W per busy core "
                     f"({profile.name}). Cost from core-hours, CO2e at the world-average grid intensity.")
    return lines


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _sections(result: OptimizeResult) -> list[tuple[str, list[str], list[list[str]]]]:
    sections = [("Baseline, peer and chosen (measured together)", SUMMARY_HEADER, _summary_rows(result)),
                ("Energy, cost and CO2 per million inferences", ENERGY_HEADER, _energy_rows(result))]
    if result.sensitivity:
        sections.append((f"Per-layer sensitivity of the chosen quantization (each layer alone, on the model it "
                         f"quantized, first {SENSITIVITY_SAMPLES} validation samples)",
                         ["layer", "metric drop"], [[name, f"{drop:.4f}"] for name, drop in result.sensitivity]))
    if result.constraints.target:
        sections.append(_target_section(result))
    if result.exports:
        sections.append(_exports_section(result))
    sections.append(("All candidates", TRIALS_HEADER, _trial_rows(result)))
    return sections


TARGET_HEADER = ["model", "fits", "latency ms (estimate)", "energy mJ (estimate)", "RAM MB", "flash MB", "why not chosen"]


def _target_section(result: OptimizeResult) -> tuple[str, list[str], list[list[str]]]:
    """The finalists on the target: estimates with their band, and what ruled each out."""
    c = result.constraints
    band = next((e["band"] for e in result.on_target.values() if e.get("band")), None)
    rows = []
    for candidate in result.finalists:
        e = result.on_target.get(candidate.name, {})
        trial = next((t for t in result.trials if t.recipe == candidate.name), None)
        if e.get("fits") is False:
            rows.append([candidate.name, "no", "-", "-", "-", "-", e["why"]])
            continue
        if not e:
            continue
        why = ("chosen" if candidate.name == result.chosen.recipe else
               c.exceeded(trial.violations)
               if trial else "not a search candidate")
        rows.append([candidate.name, "yes", f"{e['latency_ms']:.3f}", f"{e['energy_mj']:.4f}",
                     f"{e['ram_bytes'] / 2**20:.3f}", f"{e['flash_bytes'] / 2**20:.3f}",
                     why or f"within constraints, not the lowest {result.settings.objective}"])
    for recipe, why in result.rejected:
        if recipe not in {r[0] for r in rows}:
            rows.append([recipe, "no", "-", "-", "-", "-", why + " (dropped before its accuracy run)"])
    title = (f"On {c.target}: estimates, not measurements (error band on this machine, leave-one-family-out: median "
             f"{band['median_error']:.0%}, 90th percentile {band['p90_error']:.0%})" if band else f"On {c.target}")
    return title, TARGET_HEADER, rows


EXPORTS_HEADER = ["format", "file", "KB", "quantization", "round trip: max abs diff", "tolerance", "compared with",
                  "held-out metric", "written"]


def _exports_section(result: OptimizeResult) -> tuple[str, list[str], list[list[str]]]:
    """The chosen model in other runtimes' formats, each checked on held-out samples on this machine."""
    rows = [[e.format, e.file or "-", f"{e.bytes / 1e3:.0f}" if e.passed else "-", e.quantization or "-",
             f"{e.max_abs_diff:.3g}" if e.samples else "-", f"{e.tolerance:.3g}" if e.samples else "-",
             e.reference or "-", f"{e.metric:.4f}" if e.metric is not None else "-",
             "yes" if e.passed else "no: " + e.message] for e in result.exports]
    return (f"The chosen model for other runtimes (round trip on this machine, held-out samples; the ONNX model's "
            f"held-out metric is {result.chosen_figures.metric.value:.4f})", EXPORTS_HEADER, rows)


_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#212529}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem;font-size:0.9rem}
th,td{border:1px solid #dee2e6;padding:0.25rem 0.6rem;text-align:right}th{background:#f1f3f5}
td:first-child,th:first-child{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:1rem}"""


def _bold(line: str) -> str:
    return re.sub(r"[*][*](.+?)[*][*]", r"<b>\1</b>", html.escape(line))


def render_html(result: OptimizeResult) -> str:
    paragraphs = "".join(f"<p>{_bold(line)}</p>" for line in _headline(result))
    plots = f"<div class='plots'>{_plot(result, 'latency')}{_plot(result, 'size')}</div>"
    tables = "".join(f"<h2>{html.escape(title)}</h2>{_html_table(header, rows)}"
                     for title, header, rows in _sections(result))
    machine = html.escape(_machine_line())
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>edgewise report: "
            f"{html.escape(result.task.name)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>edgewise optimize: {html.escape(result.task.name)}</h1>{paragraphs}{plots}{tables}<p><small>{machine}</small></p>"
            "</body></html>\n")


def render_markdown(result: OptimizeResult) -> str:
    parts = [f"# edgewise optimize: {result.task.name}", *_headline(result)]
    for title, header, rows in _sections(result):
        parts += [f"## {title}", _md_table(header, rows)]
    return "\n\n".join(parts + [_machine_line()]) + "\n"


def _machine_line() -> str:
    machine = describe()
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    return f"Measured on {machine['cpu']}, {machine['cores']} cores, {machine['os']}; {versions}."


def write_outputs(result: OptimizeResult, out: str | Path) -> Path:
    """model.onnx, card.json, candidates.json, report.html and report.md, each written atomically."""
    out = Path(out)
    with atomic_path(out / "model.onnx") as tmp:
        shutil.copyfile(result.chosen_candidate.onnx(), tmp)
    result.chosen_candidate.task.write_assets(out)
    write_json(out / "candidates.json", [t.to_json() for t in result.trials])
    write_json(out / "card.json", card(result))
    write_text(out / "report.md", render_markdown(result))
    write_text(out / "report.html", render_html(result))
    return out


def _figures(figures: BenchResult | None) -> dict | None:
    return figures.to_json() if figures else None


def card(result: OptimizeResult) -> dict:
    """The chosen model's card: its figures are held-out; what the search saw is under `validation`."""
    chosen = result.chosen_candidate
    return {
        "task": result.task.name, "metric": result.task.metric.name, "recipe": result.chosen.recipe,
        "params": result.chosen.params, "constraints": asdict(result.constraints),
        "objective": result.settings.objective, "constraints_met": result.met, "message": result.message,
        "interrupted": result.interrupted, "chosen": _figures(result.chosen_figures),
        "held_out": {"metric": result.chosen_figures.metric.value, "drop": result.held_out_drop,
                     "baseline_metric": result.baseline.metric.value},
        "validation": {"metric": result.chosen.metric, "drop": result.chosen.drop,
                       "baseline_metric": result.finalists[0].validation_metric},
        "warning": result.disagreement, "baseline": _figures(result.baseline), "peer": _figures(result.final(PEER)),
        "search": asdict(result.settings), "trials": len(result.trials),
        "workers": sorted({t.worker for t in result.trials if t.worker}),
        "compressed_size_bytes": compressed_size(chosen.onnx()), "machine": describe(),
        "accuracy_holds_for": accuracy_holds_for(result.chosen.recipe),
        "on_target": result.on_target.get(result.chosen.recipe),
        "exports": [e.to_json() for e in result.exports],
    }
