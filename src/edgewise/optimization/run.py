"""`optimize`: search, choose within the constraints, re-measure the finalists, write artifacts."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgewise.compress.candidate import Candidate
from edgewise.compress.quantize import ort_default_dynamic
from edgewise.compress.recipe import compressed_size, measure_candidates
from edgewise.compress.sensitivity import layer_sensitivity, score_onnx
from edgewise.files import atomic_path, write_json, write_text
from edgewise.measure.bench import BenchSettings
from edgewise.measure.machine import describe
from edgewise.optimize.search import OBJECTIVES, Constraints, Searcher, SearchSettings, TrialRecord
from edgewise.task import Task

PEER = "ort-quantize_dynamic-default"
SENSITIVITY_SAMPLES = 128


@dataclass
class OptimizeResult:
    task: Task
    constraints: Constraints
    settings: SearchSettings
    trials: list[TrialRecord]
    chosen: TrialRecord
    met: bool
    message: str
    finalists: list[Candidate]          # baseline, peer, chosen, other Pareto members: measured together
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    interrupted: bool = False

    def final(self, name: str) -> dict | None:
        return next((c.figures for c in self.finalists if c.name == name), None)

    @property
    def baseline(self) -> dict:
        return self.finalists[0].figures

    @property
    def chosen_figures(self) -> dict:
        return self.final(self.chosen.recipe)


def choose(trials: list[TrialRecord], objective: str) -> tuple[TrialRecord, bool, str]:
    """The best on the objective among trials within every constraint; else the closest, saying
    which constraint failed."""
    feasible = [t for t in trials if t.feasible]
    if feasible:
        best = min(feasible, key=lambda t: (t.objective(objective), -t.figures["metric"]["value"]))
        return best, True, ""
    closest = min(trials, key=lambda t: sum(max(0.0, v) / _scale(k) for k, v in t.violations.items()))
    failed = ", ".join(f"{k.replace('_', '-')} exceeded by {v:.3g}" for k, v in closest.violations.items() if v > 0)
    always = [k for k in closest.violations if all(t.violations[k] > 0 for t in trials)]
    reason = f"{' and '.join('--' + k.replace('_', '-') for k in always)} failed for every candidate; " if always else ""
    return closest, False, f"no candidate met every constraint: {reason}returning the closest, {closest.recipe} ({failed})"


def _scale(constraint: str) -> float:
    return {"max_drop": 1.0, "max_size_mb": 1.0, "max_latency_ms": 0.1}.get(constraint, 1.0)


def pareto(trials: list[TrialRecord], objective: str) -> list[TrialRecord]:
    """Trials no other trial beats on both the metric and the objective."""
    front = []
    for t in trials:
        dominated = any(o.figures["metric"]["value"] >= t.figures["metric"]["value"]
                        and o.objective(objective) <= t.objective(objective)
                        and (o.figures["metric"]["value"] > t.figures["metric"]["value"]
                             or o.objective(objective) < t.objective(objective)) for o in trials)
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: t.objective(objective))


def _candidate(searcher: Searcher, record: TrialRecord) -> Candidate:
    if record.onnx_path and Path(record.onnx_path).is_file():
        return Candidate(searcher.task, searcher.workdir, recipe=(record.recipe,), onnx_path=Path(record.onnx_path))
    rebuilt = searcher.build(record.params)  # from an earlier session of a resumed study
    return Candidate(searcher.task, searcher.workdir, recipe=(record.recipe,), onnx_path=rebuilt.onnx())


def _peer(searcher: Searcher) -> Candidate:
    path = ort_default_dynamic(searcher.baseline.onnx(), searcher.workdir / "peer-quantize-dynamic.onnx")
    return Candidate(searcher.task, searcher.workdir, recipe=(PEER,), onnx_path=path)


def _sensitivity(searcher: Searcher, record: TrialRecord) -> list[tuple[str, float]]:
    """Per-layer sensitivity of the chosen quantization, on the model it quantized."""
    steps = searcher.steps(record.params)
    if not steps or steps[-1].stage != "quantize":
        steps = searcher.steps({**record.params, "quant": "int8-dynamic"})
    quant = steps[-1]
    source = searcher.build({**record.params, "quant": "fp32"}).onnx()
    task = searcher.task
    baseline = score_onnx(task, source, SENSITIVITY_SAMPLES)  # the drop each layer's quantization adds
    run = lambda s, d, exclude=(), include=None: quant.quantize(searcher.baseline, s, d, exclude, include)  # noqa: E731
    return layer_sensitivity(task, source, run, baseline, searcher.constraints.tolerance, SENSITIVITY_SAMPLES)


def optimize(task: Task, constraints: Constraints | None = None, settings: SearchSettings | None = None,
             final_seconds: float = 4.0, workdir: str | Path | None = None) -> OptimizeResult:
    """Search recipes for `task` and choose the best model within `constraints`.

    Returns the result with every trial, the chosen one (or the closest, with the reason), and
    the finalists (baseline, ORT's quantize_dynamic default, the chosen and the Pareto front)
    re-measured interleaved in one run. Candidate models are written to `workdir` (a new
    temporary folder, left for the caller, when not given).
    """
    constraints, settings = constraints or Constraints(), settings or SearchSettings()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgewise-optimize-"))
    searcher = Searcher(task, constraints, settings, workdir)
    trials = searcher.run()
    if not trials:
        trials = [searcher.evaluate({"depth": 1.0, "prune": 0.0, "quant": "fp32"}, -1)]
    chosen, met, message = choose(trials, settings.objective)
    front = [t for t in pareto(trials, settings.objective) if t.recipe != chosen.recipe][:3]
    finalists = [searcher.baseline, _peer(searcher), _candidate(searcher, chosen),
                 *[_candidate(searcher, t) for t in front if t.recipe != "baseline"]]
    finalists = list({c.name: c for c in finalists}.values())
    bench_settings = BenchSettings(batch_sizes=(1,), seconds=1.0 if searcher.interrupted else final_seconds)
    if settings.threads:
        bench_settings.threads = settings.threads
    measure_candidates(finalists, bench_settings)
    result = OptimizeResult(task, constraints, settings, trials, chosen, met, message, finalists,
                            interrupted=searcher.interrupted)
    if not searcher.interrupted:
        try:
            result.sensitivity = _sensitivity(searcher, chosen)
        except KeyboardInterrupt:
            result.interrupted = True
    return result


def write_outputs(result: OptimizeResult, out: str | Path) -> Path:
    """model.onnx, card.json, candidates.json, report.html and report.md, each written atomically."""
    from edgewise.optimize.report import render_html, render_markdown

    out = Path(out)
    chosen = next(c for c in result.finalists if c.name == result.chosen.recipe)
    with atomic_path(out / "model.onnx") as tmp:
        shutil.copyfile(chosen.onnx(), tmp)
    write_json(out / "candidates.json", [asdict(t) for t in result.trials])
    write_json(out / "card.json", card(result))
    write_text(out / "report.md", render_markdown(result))
    write_text(out / "report.html", render_html(result))
    return out


def card(result: OptimizeResult) -> dict:
    return {
        "task": result.task.name, "metric": result.task.metric.name, "recipe": result.chosen.recipe,
        "params": result.chosen.params, "constraints": asdict(result.constraints),
        "objective": result.settings.objective, "constraints_met": result.met, "message": result.message,
        "interrupted": result.interrupted, "chosen": result.chosen_figures, "baseline": result.baseline,
        "peer": result.final(PEER), "search": asdict(result.settings) | {"objective_key": OBJECTIVES[result.settings.objective][0]},
        "trials": len(result.trials), "compressed_size_bytes": compressed_size(
            next(c for c in result.finalists if c.name == result.chosen.recipe).onnx()),
        "machine": describe(),
    }
