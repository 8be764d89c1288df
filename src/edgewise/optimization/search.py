"""Multi-objective search over recipes with Optuna: metric vs latency, size or energy.

Torch stages (distill, prune) are built once per setting and quantized several ways; a study in
SQLite (`--study sqlite:///x.db`) survives an interruption and continues where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from edgewise.compression.candidate import Candidate
from edgewise.compression.recipe import check_order
from edgewise.compression.sensitivity import Tolerance, score_onnx
from edgewise.errors import EdgewiseError
from edgewise.measure.bench import BenchResult, BenchSettings, BenchTarget, bench
from edgewise.optimization.claims import Claims
from edgewise.optimization.space import Space, space_for
from edgewise.progress import _STDERR, progress_bar
from edgewise.task import Task

# What each objective minimises, read from a candidate's figures.
OBJECTIVES: dict[str, Callable[[BenchResult], float]] = {
    "latency": lambda figures: figures.latency_ms.p50,
    "size": lambda figures: figures.size_bytes,
    "energy": lambda figures: figures.energy_j,
}


class DoesNotFit(EdgewiseError):
    """A candidate the target's fit check refused: it is dropped before its accuracy is measured."""


@dataclass(frozen=True)
class Constraints:
    """What the chosen model must satisfy.

    Args:
        max_drop: allowed metric drop against the original, in points (or % with `relative`).
        max_size_mb: largest model file, in MB (2**20 bytes).
        max_latency_ms: largest batch-1 p50 latency on ONNX Runtime (on `target`: its estimate there).
        target: a device profile (edgewise targets list); candidates that do not fit it are dropped
            before any accuracy run, and latency and energy are its estimates.
        max_ram_mb: largest RAM the model may take on `target`.
    """

    max_drop: float = 1.0
    relative: bool = False
    max_size_mb: float | None = None
    max_latency_ms: float | None = None
    target: str | None = None          # a device profile: latency and RAM are its estimates, and the model must fit it
    max_ram_mb: float | None = None    # RAM on the target (weights if it loads them, activations, runtime)

    def __post_init__(self) -> None:
        if not self.max_drop >= 0:
            raise EdgewiseError(f"--max-drop must be >= 0, got {self.max_drop}")
        if self.relative and self.max_drop >= 100:
            raise EdgewiseError(f"--max-drop {self.max_drop}% with --relative allows losing the whole metric; "
                                "give a percentage below 100")
        if self.max_ram_mb is not None and self.target is None:
            raise EdgewiseError("--max-ram-mb is RAM on a device: give --target NAME too (edgewise targets list)")
        if self.target is not None:
            from edgewise.targets.profiles import load

            load(self.target)   # an unknown name fails before the search starts
        for name in ("max_size_mb", "max_latency_ms", "max_ram_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise EdgewiseError(f"--{name.replace('_', '-')} must be > 0, got {value}")

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(self.max_drop, self.relative)

    def violations(self, drop: float, figures: BenchResult, on_target: dict | None = None) -> dict[str, float]:
        """How far each constraint is exceeded (<= 0 means met); `on_target`: the estimates on the target."""
        found = {"max_drop": drop - self.max_drop}
        if self.max_size_mb is not None:
            found["max_size_mb"] = figures.size_bytes / 2**20 - self.max_size_mb
        if self.max_latency_ms is not None:
            latency = on_target["latency_ms"] if on_target else figures.latency_ms.p50
            found["max_latency_ms"] = latency - self.max_latency_ms
        if self.max_ram_mb is not None and on_target:
            found["max_ram_mb"] = on_target["ram_bytes"] / 2**20 - self.max_ram_mb
        return found

    def exceeded(self, violations: dict[str, float]) -> str:
        """The constraints `violations` breaks, each with its bound and by how much, e.g.
        "estimated latency on raspberry-pi-5 1.32 ms > --max-latency-ms 0.2"."""
        where = f"estimated {{}} on {self.target}" if self.target else "{}"
        parts = []
        for name, excess in violations.items():
            if excess <= 0:
                continue
            bound = getattr(self, name)
            what, unit = {"max_drop": ("metric drop", " points" if not self.relative else "%"),
                          "max_size_mb": ("size", " MB"), "max_latency_ms": (where.format("latency"), " ms"),
                          "max_ram_mb": (where.format("RAM"), " MB")}.get(name, (name, ""))
            parts.append(f"{what} {bound + excess:.3g}{unit} > --{name.replace('_', '-')} {bound:g}")
        return ", ".join(parts)


@dataclass
class SearchSettings:
    objective: str = "latency"
    trials: int = 20
    time_budget_min: float = 10.0
    study: str | None = None          # an Optuna storage URL, e.g. sqlite:///edgewise.db
    seed: int = 0
    distill_epochs: int = 10
    trial_seconds: float = 0.5        # latency measurement per trial; the finalists get longer
    guard: bool = False               # accuracy guard (sensitivity fallback) in quantization steps
    threads: int | None = None
    exports: tuple[str, ...] = ()     # other runtimes' formats for the chosen model (targets.export)
    report_only: bool = False         # run no trials: report the study as it stands (with study)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise EdgewiseError(f"--objective {self.objective!r}: use one of {', '.join(OBJECTIVES)}")
        if self.trials < 1 or not self.time_budget_min > 0:
            raise EdgewiseError("--trials must be >= 1 and --time-budget-min > 0")
        if self.report_only and not self.study:
            raise EdgewiseError("--report-only reports a stored study: give --study URL too")


@dataclass
class TrialRecord:
    """One completed trial: its recipe and figures, measured on the validation split."""

    number: int
    params: dict
    recipe: str
    figures: BenchResult
    drop: float
    violations: dict[str, float]
    onnx_path: str | None = None
    details: dict = field(default_factory=dict)
    worker: str = ""             # host:pid of the process that ran it (a shared study has several)

    @property
    def feasible(self) -> bool:
        return all(v <= 1e-12 for v in self.violations.values())

    @property
    def metric(self) -> float:
        return self.figures.metric.value

    def objective(self, name: str) -> float:
        """On a target, latency and energy are its estimates there; size is the file's either way."""
        on_target = self.details.get("target")
        if on_target and name == "latency":
            return on_target["latency_ms"]
        if on_target and name == "energy":
            return on_target["energy_mj"] / 1e3
        return OBJECTIVES[name](self.figures)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrialRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        return cls(**{**fields, "figures": BenchResult.from_json(fields["figures"])})


def _gone(worker: str | None) -> bool:
    """True for a worker (host:pid) of this machine whose process no longer exists (killed mid-trial).
    A worker on another machine is taken to be alive: a claim it left is freed by hand."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Searcher:
    """Runs the study for one task; keeps the torch stages it built for reuse."""

    def __init__(self, task: Task, constraints: Constraints, settings: SearchSettings, workdir: Path) -> None:
        self.task, self.constraints, self.settings, self.workdir = task, constraints, settings, workdir
        self.rejected: list[tuple[str, str]] = []   # (recipe, why) of candidates the target's fit check dropped
        self.baseline = Candidate.from_task(task, workdir)
        self.baseline.baseline_metric = self.baseline.validation_metric = score_onnx(task, self.baseline.onnx())
        self.space: Space = space_for(task, self.baseline.onnx())
        self._stages: dict[tuple, Candidate] = {}
        self.interrupted = False
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.claims: Claims | None = None
        self._skips = 0

    def study(self) -> optuna.Study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=self.settings.seed, multivariate=True)
        name = f"edgewise-{self.task.name}-{self.settings.objective}"
        for attempt in range(6):
            try:
                return optuna.create_study(storage=self.settings.study, study_name=name, sampler=sampler,
                                           directions=["maximize", "minimize"], load_if_exists=True)
            except Exception as exc:  # bad URL, missing driver, unreadable file: all the user's to fix
                # Workers started together on a fresh database race to create Optuna's tables (or the
                # study): the loser's error is a duplicate; a moment later the tables are there.
                racing = any(word in str(exc) for word in ("duplicate key", "already exists", "UniqueViolation"))
                if racing and attempt < 5:
                    time.sleep(0.3 * (attempt + 1))
                    continue
                raise EdgewiseError(f"--study {self.settings.study}: cannot open it ({str(exc).splitlines()[0]}); "
                                    "give a URL such as sqlite:///edgewise.db") from None

    def space_size(self) -> int:
        return len(self.space.depth) * len(self.space.prune) * len(self.space.quant)

    def run(self) -> list[TrialRecord]:
        """Trials until the count or the time budget is spent, or Ctrl-C; every completed trial
        of the study (earlier sessions' and other workers' included).

        Workers on one study share it: each recipe is claimed before it runs (see `claims`), the
        trial count is the study's, and workers that start while another's time budget is running
        share that budget. A worker that is done waits for the others' trials in flight, so its
        report covers the whole study."""
        study = self.study()
        self.claims = Claims(self.settings.study, study.study_name, self.worker)
        if self.settings.report_only:
            return self.records(study)
        self._enqueue_cheap_first(study)
        wanted = min(self.settings.trials, self.space_size())
        deadline = self._shared_deadline(study)
        try:
            with progress_bar() as progress, self._noting_ctrl_c():
                bar = progress.add_task("searching", total=wanted, status="")
                while not self.interrupted:
                    done = self._done(study)
                    progress.update(bar, completed=min(len(done), wanted))
                    if len(done | self._taken()) >= wanted or time.time() >= deadline:
                        break
                    if self._trial(study, done, wanted):
                        left = max(0.0, deadline - time.time()) / 60
                        progress.update(bar, status=f"best: {self._best_text(study)}  budget left {left:.1f} min")
                if not self.interrupted:
                    self._wait_for_others(study, deadline, lambda n: progress.update(
                        bar, completed=min(len(self._done(study)), wanted),
                        status=f"waiting for {n} trial(s) of other workers"))
        except KeyboardInterrupt:
            self.interrupted = True
        return self.records(study)

    def _done(self, study: optuna.Study) -> set[str]:
        """Recipes done: completed, or failed because a step does not apply. Interrupted trials
        (FAIL without an error) give their claim back and are tried again."""
        return {self._key(t.params) for t in study.get_trials(deepcopy=False)
                if len(t.params) == 3 and (t.state == optuna.trial.TrialState.COMPLETE
                                           or (t.state == optuna.trial.TrialState.FAIL and "error" in t.user_attrs))}

    def _shared_deadline(self, study: optuna.Study) -> float:
        """The wall-clock end of the time budget: a worker joining while another's budget runs shares
        it; once it has run out, a new session (a resumed study) starts its own."""
        budget, now = self.settings.time_budget_min * 60, time.time()
        started = study.user_attrs.get("edgewise_session_started")
        if started is None or now - started >= budget:
            study.set_user_attr("edgewise_session_started", now)
            started = now
        return started + budget

    def _wait_for_others(self, study: optuna.Study, deadline: float, show) -> None:
        """Until no claimed trial of the study runs (other workers finishing theirs), at most 60 s past
        the budget. A trial whose claim is gone (its process died, another took its recipe) is not waited for."""
        while time.time() < deadline + 60:
            running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                       if (worker := self.claims.worker_of(t.number)) and not _gone(worker)]
            if not running:
                return
            show(len(running))
            time.sleep(0.5)

    def _taken(self) -> set[str]:
        """Recipes claimed by live workers (a claim of a process killed on this machine is free again)."""
        return {recipe for recipe, worker in self.claims.taken().items() if not _gone(worker)}

    @contextlib.contextmanager
    def _noting_ctrl_c(self):
        """Ctrl-C stops the search at once, and is also noted: a KeyboardInterrupt raised inside a
        finaliser (an ONNX Runtime session collected mid-trial) is swallowed by Python, and the
        note still ends the search before the next trial."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signum, frame):
            self.interrupted = True
            raise KeyboardInterrupt
        previous = signal.signal(signal.SIGINT, note)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _enqueue_cheap_first(self, study: optuna.Study) -> None:
        """Quantizing the model as it is costs seconds; distilling or pruning it costs minutes.
        The cheap corner of the space goes first, so even a short budget sees every quantization."""
        if study.trials:
            return  # a resumed study keeps its own order
        for quant in self.space.quant:
            study.enqueue_trial({"depth": 1.0, "prune": 0.0, "quant": quant})

    def _trial(self, study: optuna.Study, done: set[str], wanted: int) -> bool:
        """Ask, claim, evaluate and tell one trial; False when it was a repeat, another worker's,
        beyond the shared budget, or did not apply."""
        trial = study.ask()
        try:
            params = {"depth": trial.suggest_categorical("depth", list(self.space.depth)),
                      "prune": trial.suggest_categorical("prune", list(self.space.prune)),
                      "quant": trial.suggest_categorical("quant", list(self.space.quant))}
        except ValueError:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise EdgewiseError(f"--study {self.settings.study} was made with another search space; "
                                "give a new study name or file") from None
        key = self._key(params)
        if key in done or not self._claim(key, trial.number):   # TPE repeats itself on small spaces
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self._skipped(study, done)
            return False
        self._skips = 0
        if self.claims.rank(key) >= wanted:   # other workers spent the shared budget meanwhile
            self.claims.release(key, trial.number)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return False
        try:
            record = self.evaluate(params, trial.number)
        except Exception as exc:  # a step that does not apply (or a tool that fails) on this model
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if not isinstance(exc, EdgewiseError):
                _STDERR.print(f"trial {trial.number} ({params}) failed: {type(exc).__name__}: {str(exc)[:200]}")
            return False
        except BaseException:
            self.claims.release(key, trial.number)   # interrupted: someone may run it later
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        record.worker = self.worker
        for name, value in record.to_json().items():
            trial.set_user_attr(name, value)
        for name, excess in record.violations.items():
            trial.set_constraint(name, excess)  # <= 0 is within the constraint
        study.tell(trial, [record.metric, record.objective(self.settings.objective)])
        return True

    def _claim(self, key: str, number: int) -> bool:
        """This worker's right to run `key`: a fresh claim, or one taken over from a dead process."""
        if self.claims.claim(key, number):
            return True
        holder = self.claims.holder(key)
        return holder is not None and _gone(holder[1]) and self.claims.take_over(key, holder[0], number)

    def _skipped(self, study: optuna.Study, done: set[str]) -> None:
        """After a few skips in a row, queue a recipe nobody has: the sampler keeps proposing taken ones."""
        self._skips += 1
        if self._skips < 3:
            return
        taken = done | self._taken()
        free = [p for p in itertools.product(self.space.depth, self.space.prune, self.space.quant)
                if self._key(dict(zip(("depth", "prune", "quant"), p))) not in taken]
        if free:
            study.enqueue_trial(dict(zip(("depth", "prune", "quant"), free[0])))
        else:
            time.sleep(0.5)   # every recipe is claimed: others are running the last ones
        self._skips = 0

    @staticmethod
    def _key(params: dict) -> str:
        return f"depth={params['depth']}|prune={params['prune']}|quant={params['quant']}"

    def records(self, study: optuna.Study) -> list[TrialRecord]:
        return [TrialRecord.from_json(t.user_attrs) for t in study.trials
                if t.state == optuna.trial.TrialState.COMPLETE]

    def _best_text(self, study: optuna.Study) -> str:
        feasible = [r for r in self.records(study) if r.feasible]
        if not feasible:
            return "none within constraints yet"
        best = min(feasible, key=lambda r: r.objective(self.settings.objective))
        return f"{best.recipe} ({self.settings.objective} {best.objective(self.settings.objective):.4g})"

    def steps(self, params: dict):
        steps = self.space.recipe(params["depth"], params["prune"], params["quant"], self.settings.distill_epochs)
        if self.settings.guard or self.task.is_onnx:
            steps = [dataclasses.replace(s, max_drop=self._max_drop_text()) if s.stage == "quantize" else s
                     for s in steps]
        check_order(steps)
        return steps

    def _max_drop_text(self) -> str:
        return f"{self.constraints.max_drop:g}%" if self.constraints.relative else f"{self.constraints.max_drop:g}"

    def build(self, params: dict) -> Candidate:
        """The candidate for `params`; torch stages come from the cache when already built."""
        steps = self.steps(params)
        candidate = self.torch_stage(params)
        for step in steps[len(candidate.recipe):]:
            candidate = step.apply(candidate)
        return candidate

    def torch_stage(self, params: dict) -> Candidate:
        """The candidate after the torch steps (distill, prune) of `params`, built once."""
        torch_steps = [s for s in self.steps(params) if s.stage != "quantize"]
        key = tuple(s.label() for s in torch_steps)
        if key not in self._stages:
            candidate = self.baseline
            for step in torch_steps:
                candidate = step.apply(candidate)
            candidate.onnx()
            self._stages[key] = candidate
        return self._stages[key]

    def on_target(self, candidate: Candidate) -> dict | None:
        """The cheap checks on the target, before any accuracy run: does it fit (else EdgewiseError,
        and the trial is dropped), and its estimated latency, energy and RAM there."""
        if self.constraints.target is None:
            return None
        from edgewise.targets.fit import fit
        from edgewise.targets.predict import predict
        from edgewise.targets.profiles import load

        target = load(self.constraints.target)
        fitted = fit(candidate.onnx(), target)
        if not fitted.fits:
            raise DoesNotFit(f"does not fit {target.name}: {fitted.problems[0]}")
        estimate = predict(candidate.onnx(), target, threads=self.settings.threads)
        return {"target": target.name, "latency_ms": estimate["latency_ms"], "energy_mj": estimate["energy_mj"],
                "band": estimate["band"], "estimate": estimate["estimate"], "ram_bytes": fitted.used("ram"),
                "flash_bytes": fitted.used("flash"), "estimated": True}

    def evaluate(self, params: dict, number: int) -> TrialRecord:
        candidate = self.build(params)
        try:
            on_target = self.on_target(candidate)
        except DoesNotFit as exc:
            self.rejected.append((candidate.name, str(exc)))
            raise
        settings = BenchSettings(batch_sizes=(1,), seconds=self.settings.trial_seconds, measure_memory=False,
                                 warmup=5)
        if self.settings.threads:
            settings.threads = self.settings.threads
        [figures] = bench([BenchTarget(candidate.name, candidate.onnx(), self.task)], settings)
        drop = self.constraints.tolerance.drop(self.baseline.baseline_metric, figures.metric.value, self.task.metric)
        details = {k: v for k, v in candidate.details.items() if k != "sensitivity"}
        if on_target:
            details["target"] = on_target
        return TrialRecord(number, params, candidate.name, figures, drop,
                           self.constraints.violations(drop, figures, on_target), str(candidate.onnx()), details)
