"""Recipes: steps composed in order (distill -> prune -> quantize), from Python or a string.

    compress(task, [Distill(depth=0.5), Prune(0.3), Int8()])
    compress(task, "distill(depth=0.5)+prune(0.3)+int8")
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

from edgewise.compression.candidate import Candidate
from edgewise.compression.sensitivity import score_onnx
from edgewise.compression.steps import STAGES, STEPS, Step
from edgewise.errors import EdgewiseError
from edgewise.files import atomic_path, write_json
from edgewise.measure.bench import BenchSettings, BenchTarget, bench
from edgewise.measure.machine import accuracy_holds_for, describe
from edgewise.runtime import onnx as onnx_runtime
from edgewise.task import Task


def _options(step: type[Step]) -> list:
    return [f for f in fields(step) if f.init and f.name != "student"]


def _coerce(step: type[Step], option, text: str):
    kind = str(option.type)
    try:
        if kind.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise EdgewiseError(f"{step.name}: {option.name}={text!r} is not a {kind.split(' ')[0]}") from None
    return text


def _split_top_level(text: str, separator: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def parse_step(text: str) -> Step:
    """One step from `name` or `name(value, key=value, ...)`."""
    match = re.fullmatch(r"\s*([a-z0-9-]+)\s*(?:\((.*)\))?\s*", text)
    if not match or match.group(1) not in STEPS:
        raise EdgewiseError(f"unknown recipe step {text.strip()!r}: use one of {', '.join(STEPS)}")
    step = STEPS[match.group(1)]
    options = _options(step)
    names = [o.name for o in options]
    values, positional = {}, 0
    for argument in (a.strip() for a in _split_top_level(match.group(2) or "", ",")):
        if not argument:
            continue
        key, sep, value = argument.partition("=")
        if not sep:
            if positional >= len(options):
                raise EdgewiseError(f"{step.name}: too many values; it takes {', '.join(names)}")
            key, value, positional = names[positional], argument, positional + 1
        key = key.strip().replace("-", "_")
        if key not in names:
            raise EdgewiseError(f"{step.name}: unknown option {key!r}; valid options: {', '.join(names)}")
        values[key] = _coerce(step, options[names.index(key)], value.strip())
    return step(**values)


def parse_recipe(text: str) -> list[Step]:
    """Steps from a recipe string such as "prune(0.5)+int8"."""
    steps = [parse_step(part) for part in _split_top_level(text, "+") if part.strip()]
    if not steps:
        raise EdgewiseError(f"empty recipe {text!r}: e.g. \"prune(0.5)+int8\"; steps: {', '.join(STEPS)}")
    return steps


def check_order(steps: list[Step]) -> None:
    stages = [STAGES[s.stage] for s in steps]
    if stages != sorted(stages):
        raise EdgewiseError("recipe order must be distill -> prune -> quantize: "
                            f"{' + '.join(s.label() for s in steps)}")
    if stages.count(STAGES["quantize"]) > 1:
        raise EdgewiseError("a recipe takes at most one quantization step (int8, int8-dynamic, int4, ...)")


@dataclass
class CompressResult:
    """The baseline and the candidate after each step; `final` is the last."""

    baseline: Candidate
    steps: list[Candidate]

    @property
    def final(self) -> Candidate:
        return self.steps[-1] if self.steps else self.baseline

    def to_json(self) -> dict:
        entry = lambda c: {"recipe": c.name, **(c.figures.to_json() if c.figures else {}),  # noqa: E731
                           "validation_metric": c.validation_metric, "details": c.details}
        return {"baseline": entry(self.baseline), "steps": [entry(c) for c in self.steps],
                "final": entry(self.final)}


def compress(task: Task, steps: list[Step] | str, *, workdir: str | Path | None = None, measure: bool = True,
             settings: BenchSettings | None = None) -> CompressResult:
    """Apply `steps` in order to the task's model and measure every candidate on ONNX Runtime.

    Every choice along the way (early stopping, the accuracy guard) is made on the task's
    validation split; the stated metric is measured on its held-out eval split (see `Task.holdout`).

    Returns:
        The baseline and one Candidate per step, each with its bench figures at batch 1 (held-out
        metric, latency, size, params, energy ...), measured interleaved in one run, and its
        `validation_metric`.
    """
    steps = parse_recipe(steps) if isinstance(steps, str) else list(steps)
    check_order(steps)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgewise-compress-"))
    choosing, stating = task.holdout()
    baseline = Candidate.from_task(choosing, workdir)
    baseline.baseline_metric = baseline.validation_metric = score_onnx(choosing, baseline.onnx())
    candidates, current = [], baseline
    for step in steps:
        current = step.apply(current)
        candidates.append(current)
    result = CompressResult(baseline, candidates)
    if measure:
        measure_candidates([baseline, *candidates], settings, judge=stating)
    return result


def measure_candidates(candidates: list[Candidate], settings: BenchSettings | None = None,
                       judge: Task | None = None) -> None:
    """Bench every candidate at batch 1 (interleaved) and store the figures on it.

    Args:
        judge: the task whose metric is stated (its held-out split); each candidate's own by
            default. When given, the metric on each candidate's own task (the validation split it
            was chosen on) is stored as `validation_metric`.
    """
    settings = settings or BenchSettings(batch_sizes=(1,))
    targets = [BenchTarget(c.name, c.onnx(), judge or c.task) for c in candidates]
    for candidate, figures in zip(candidates, bench(targets, settings)):
        figures.compressed_size_bytes = compressed_size(candidate.onnx())
        if candidate.model is not None:
            inputs = candidate.task.sample_input(4)
            sess = onnx_runtime.session(candidate.onnx())
            figures.export_max_abs_error = onnx_runtime.max_abs_error(candidate.model, sess, inputs)
        if judge is not None and judge is not candidate.task and candidate.validation_metric is None:
            candidate.validation_metric = score_onnx(candidate.task, candidate.onnx())
        candidate.figures = figures


def compressed_size(path: Path) -> int:
    """Bytes of the model file deflated (zlib level 6): what zeros and low-entropy weights save."""
    return len(zlib.compress(Path(path).read_bytes(), 6))


def write_artifacts(result: CompressResult, out: str | Path, extra: dict | None = None) -> Path:
    """`model.onnx` (the final candidate) and `card.json` (recipe, every figure, machine), atomically."""
    out = Path(out)
    with atomic_path(out / "model.onnx") as tmp:
        shutil.copyfile(result.final.onnx(), tmp)
    card = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "task": result.final.task.name,
            "metric": result.final.task.metric.name, "recipe": result.final.name, **result.to_json(),
            "machine": describe(), "accuracy_holds_for": accuracy_holds_for(result.final.name), **(extra or {})}
    result.final.task.write_assets(out)
    write_json(out / "card.json", card)
    return out
