"""The accuracy guard: per-layer sensitivity, then the most sensitive layers stay in float."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgewise.compression.quantize import weight_nodes
from edgewise.errors import EdgewiseError
from edgewise.measure.quality import Metric
from edgewise.progress import progress_bar
from edgewise.runtime import onnx as onnx_runtime
from edgewise.task import Task

# quantize(src, dst, exclude=[...], include=[...] | None) -> dst
QuantizeFn = Callable[..., Path]


@dataclass(frozen=True)
class Tolerance:
    """How much of the task metric a step may lose.

    Args:
        max_drop: the allowed drop; in points (the metric x100 for accuracy and f1, the raw value
            for cosine) unless `relative`.
        relative: `max_drop` is a percentage of the baseline metric instead.
    """

    max_drop: float = 1.0
    relative: bool = False

    def __post_init__(self) -> None:
        if not self.max_drop >= 0:
            raise EdgewiseError(f"max drop must be >= 0, got {self.max_drop}")

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        """"0.5" is 0.5 points; "2%" is 2 percent of the baseline."""
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", str(text))
        if not match:
            raise EdgewiseError(f"max drop {text!r}: give a number of points (0.5) or a percentage (2%)")
        return cls(float(match.group(1)), relative=bool(match.group(2)))

    def drop(self, baseline: float, value: float, metric: Metric) -> float:
        if self.relative:
            return (baseline - value) / abs(baseline) * 100.0 if baseline else 0.0
        return (baseline - value) * metric.scale

    def __str__(self) -> str:
        return f"{self.max_drop:g}%" if self.relative else f"{self.max_drop:g} point(s)"


@dataclass
class GuardResult:
    path: Path
    value: float
    drop: float
    kept_float: list[str]
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    met: bool = True
    message: str = ""


def score_onnx(task: Task, path: Path, limit: int | None = None) -> float:
    """The task metric of an ONNX model on the eval split (its first `limit` samples)."""
    sess = onnx_runtime.session(path)
    return task.evaluate(lambda inputs: onnx_runtime.predict(sess, inputs), limit=limit)


def layer_sensitivity(task: Task, src: Path, quantize: QuantizeFn, baseline: float,
                      tolerance: Tolerance, limit: int | None = None) -> list[tuple[str, float]]:
    """Each weight layer quantized alone: its metric drop (in `tolerance` units), most sensitive
    first. With `limit`, measured on the first `limit` eval samples (and `baseline` must be too)."""
    nodes = weight_nodes(src)
    drops = []
    with tempfile.TemporaryDirectory(prefix="edgewise-sens-") as tmp, progress_bar() as progress:
        bar = progress.add_task("per-layer sensitivity", total=len(nodes), status="")
        for node in nodes:
            path = quantize(src, Path(tmp) / "one.onnx", include=[node])
            drops.append((node, tolerance.drop(baseline, score_onnx(task, path, limit), task.metric)))
            progress.advance(bar)
    return sorted(drops, key=lambda item: item[1], reverse=True)


def guarded(task: Task, src: Path, dst: Path, quantize: QuantizeFn, tolerance: Tolerance,
            baseline: float) -> GuardResult:
    """Quantize `src` whole; if the drop exceeds `tolerance`, keep the most sensitive layers in
    float, one more at a time, until it fits. Never returns nothing: when no split meets the
    tolerance, the best model found is returned with `met=False` and a message naming the layer."""
    value = score_onnx(task, quantize(src, dst))
    drop = tolerance.drop(baseline, value, task.metric)
    if drop <= tolerance.max_drop:
        return GuardResult(dst, value, drop, [])
    sensitivity = layer_sensitivity(task, src, quantize, baseline, tolerance)
    best = GuardResult(dst, value, drop, [], sensitivity, met=False)
    ranked = [node for node, _ in sensitivity]
    with tempfile.TemporaryDirectory(prefix="edgewise-guard-") as tmp:
        for count in range(1, len(ranked)):
            trial = quantize(src, Path(tmp) / "trial.onnx", exclude=ranked[:count])
            value = score_onnx(task, trial)
            drop = tolerance.drop(baseline, value, task.metric)
            if drop < best.drop:
                best = GuardResult(dst, value, drop, ranked[:count], sensitivity, met=False)
                trial.replace(dst)
            if drop <= tolerance.max_drop:
                best.met = True
                return best
    worst, cost = sensitivity[0]
    best.message = (f"tolerance {tolerance} not met: best drop {best.drop:.3f} with {len(best.kept_float)} "
                    f"layer(s) in float; layer {worst} alone costs {cost:.3f}")
    return best
