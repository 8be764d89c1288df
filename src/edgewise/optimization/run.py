"""`optimize`: search on the validation split, choose within the constraints, re-measure the
finalists on the held-out split that no trial touched."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgewise.compression.candidate import Candidate
from edgewise.compression.quantize import ort_default_dynamic
from edgewise.compression.recipe import measure_candidates
from edgewise.compression.sensitivity import layer_sensitivity, score_onnx
from edgewise.errors import EdgewiseError
from edgewise.measure.bench import BenchResult, BenchSettings
from edgewise.optimization.search import Constraints, DoesNotFit, Searcher, SearchSettings, TrialRecord
from edgewise.task import Task

PEER = "ort-quantize_dynamic-default"
SENSITIVITY_SAMPLES = 128


@dataclass
class OptimizeResult:
    """What `optimize` found. Trials carry validation figures (what the search saw); finalists
    carry held-out figures (what is stated), and their validation metric beside them."""

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
    on_target: dict[str, dict] = field(default_factory=dict)   # finalist -> its estimates on the target, or why it does not fit
    without_target: str = ""   # with a target: what the same trials would have chosen on this machine's measurements
    rejected: list[tuple[str, str]] = field(default_factory=list)   # candidates the target's fit check dropped, and why
    torch_form: tuple | None = None    # with settings.exports: the chosen model before ONNX quantization, and its steps
    exports: list = field(default_factory=list)   # targets.export.Exported, once shipped

    def finalist(self, name: str) -> Candidate | None:
        return next((c for c in self.finalists if c.name == name), None)

    def final(self, name: str) -> BenchResult | None:
        candidate = self.finalist(name)
        return candidate.figures if candidate else None

    @property
    def baseline(self) -> BenchResult:
        return self.finalists[0].figures

    @property
    def chosen_candidate(self) -> Candidate:
        return self.finalist(self.chosen.recipe)

    @property
    def chosen_figures(self) -> BenchResult:
        return self.chosen_candidate.figures

    @property
    def held_out_drop(self) -> float:
        """The chosen model's metric drop on the held-out split (the stated figure)."""
        return self.constraints.tolerance.drop(self.baseline.metric.value, self.chosen_figures.metric.value,
                                               self.task.metric)

    @property
    def disagreement(self) -> str:
        """A warning when validation and held-out drops differ by more than the allowed drop."""
        gap = abs(self.held_out_drop - self.chosen.drop)
        if gap <= self.constraints.max_drop:
            return ""
        return (f"validation and held-out disagree: the chosen model's drop is {self.chosen.drop:.3f} on "
                f"validation but {self.held_out_drop:.3f} on held-out data, a gap larger than the allowed "
                f"{self.constraints.tolerance}; the validation split may not stand for the data the model will see")


def choose(trials: list[TrialRecord], objective: str, constraints: Constraints) -> tuple[TrialRecord, bool, str]:
    """The best on the objective among trials within every constraint; else the closest, saying
    which constraint failed."""
    feasible = [t for t in trials if t.feasible]
    if feasible:
        best = min(feasible, key=lambda t: (t.objective(objective), -t.metric))
        return best, True, ""
    closest = min(trials, key=lambda t: sum(max(0.0, v) / _scale(k) for k, v in t.violations.items()))
    failed = constraints.exceeded(closest.violations)
    always = [k for k in closest.violations if all(t.violations[k] > 0 for t in trials)]
    reason = f"{' and '.join('--' + k.replace('_', '-') for k in always)} failed for every candidate; " if always else ""
    return closest, False, f"no candidate met every constraint: {reason}returning the closest, {closest.recipe} ({failed})"


def _without_target(trials: list[TrialRecord], constraints: Constraints, objective: str) -> str:
    """What `choose` picks from the same trials judged on this machine's measurements instead of the
    target's estimates (the trials the fit check dropped stay dropped), said in a line."""
    host = dataclasses.replace(constraints, target=None, max_ram_mb=None)
    judged = [dataclasses.replace(t, details={k: v for k, v in t.details.items() if k != "target"},
                                  violations=host.violations(t.drop, t.figures)) for t in trials]
    picked, met, _ = choose(judged, objective, host)
    return f"{picked.recipe}{'' if met else ' (the closest: none met every constraint)'}"


def _scale(constraint: str) -> float:
    return {"max_drop": 1.0, "max_size_mb": 1.0, "max_latency_ms": 0.1}.get(constraint, 1.0)


def pareto(trials: list[TrialRecord], objective: str) -> list[TrialRecord]:
    """Trials no other trial beats on both the metric and the objective."""
    front = []
    for t in trials:
        dominated = any(o.metric >= t.metric and o.objective(objective) <= t.objective(objective)
                        and (o.metric > t.metric or o.objective(objective) < t.objective(objective)) for o in trials)
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: t.objective(objective))


def _candidate(searcher: Searcher, record: TrialRecord) -> Candidate:
    """The trial's model: its file when this search wrote it; rebuilt otherwise. Another worker's
    file of a shared study lies in that worker's temporary folder, gone when it finishes, which can be
    between a check that it is there and the read (the two-worker test failed so, 1 run in 4)."""
    path = Path(record.onnx_path) if record.onnx_path else None
    if path is not None and path.resolve().is_relative_to(Path(searcher.workdir).resolve()) and path.is_file():
        return Candidate(searcher.task, searcher.workdir, recipe=(record.recipe,), onnx_path=path)
    rebuilt = searcher.build(record.params)  # another worker's, or from an earlier session of a resumed study
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

    Every trial is judged on the task's validation split (see `Task.holdout`); the finalists
    (baseline, ORT's quantize_dynamic default, the chosen and the Pareto front) are then
    re-measured interleaved in one run, their metric on the held-out split that no trial touched.
    Candidate models are written to `workdir` (a new temporary folder, left for the caller, when
    not given).

    Returns the result with every trial, the chosen one (or the closest, with the reason), and
    the finalists.
    """
    constraints, settings = constraints or Constraints(), settings or SearchSettings()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgewise-optimize-"))
    choosing, stating = task.holdout()
    searcher = Searcher(choosing, constraints, settings, workdir)
    trials = searcher.run()
    if not trials and searcher.rejected:
        recipe, why = searcher.rejected[0]
        raise EdgewiseError(f"no candidate fits {constraints.target} ({recipe}: {why}); choose a larger device "
                            "or allow more compression (--max-drop)")
    if not trials and settings.report_only:
        raise EdgewiseError(f"--study {settings.study}: no completed trials of {task.name} to report; run "
                            "edgewise optimize --study on it first")
    if not trials:
        trials = [searcher.evaluate({"depth": 1.0, "prune": 0.0, "quant": "fp32"}, -1)]
    chosen, met, message = choose(trials, settings.objective, constraints)
    front = [t for t in pareto(trials, settings.objective) if t.recipe != chosen.recipe][:3]
    finalists = [searcher.baseline, _peer(searcher), _candidate(searcher, chosen),
                 *[_candidate(searcher, t) for t in front if t.recipe != "baseline"]]
    finalists = list({c.name: c for c in finalists}.values())
    bench_settings = BenchSettings(batch_sizes=(1,), seconds=1.0 if searcher.interrupted else final_seconds)
    if settings.threads:
        bench_settings.threads = settings.threads
    measure_candidates(finalists, bench_settings, judge=stating)
    result = OptimizeResult(task, constraints, settings, trials, chosen, met, message, finalists,
                            interrupted=searcher.interrupted, rejected=list(searcher.rejected))
    if constraints.target:
        estimated = {t.recipe: t.details["target"] for t in trials if "target" in t.details}
        for candidate in finalists:
            if candidate.name in estimated:   # a trial: estimated once, when it was tried
                result.on_target[candidate.name] = estimated[candidate.name]
                continue
            try:
                result.on_target[candidate.name] = searcher.on_target(candidate)
            except DoesNotFit as exc:   # the baseline or the peer need not fit: say so
                result.on_target[candidate.name] = {"target": constraints.target, "fits": False, "why": str(exc)}
        result.without_target = _without_target(trials, constraints, settings.objective)
    if not searcher.interrupted:
        try:
            result.sensitivity = _sensitivity(searcher, chosen)
        except KeyboardInterrupt:
            result.interrupted = True
    if settings.exports:
        result.torch_form = (searcher.torch_stage(chosen.params).model, searcher.steps(chosen.params))
    return result
