"""Candidate: a model at one point of a recipe, with what was measured of it."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgewise.measure.bench import BenchResult
from edgewise.runtime import onnx as onnx_runtime
from edgewise.task import Task

_counter = itertools.count()


@dataclass
class Candidate:
    """One model along a recipe.

    Torch steps (distill, prune) change `model`; quantization works on the ONNX form and leaves
    `model` as None (`float_model` keeps the torch model it started from, for other runtimes'
    exports). `figures` holds its bench figures at batch 1 once measured; `details`
    holds what a step wants reported (sensitivity, layers kept in float, sparsity ...).
    """

    task: Task
    workdir: Path
    recipe: tuple[str, ...] = ()
    model: torch.nn.Module | None = None
    float_model: torch.nn.Module | None = None   # after ONNX quantization: the torch model it quantized
    onnx_path: Path | None = None
    figures: BenchResult | None = None
    details: dict = field(default_factory=dict)
    baseline_metric: float | None = None  # the original model's metric: what tolerances are against
    validation_metric: float | None = None  # the metric on the split choices were made on, when stated apart

    @classmethod
    def from_task(cls, task: Task, workdir: Path) -> Candidate:
        if task.is_onnx:
            return cls(task, Path(workdir), onnx_path=task.model)
        return cls(task, Path(workdir), model=task.model)

    @property
    def name(self) -> str:
        return "+".join(self.recipe) or "baseline"

    def onnx(self) -> Path:
        """The ONNX form, exported from the torch model on first use."""
        if self.onnx_path is None:
            path = self.new_path("model")
            self.onnx_path = onnx_runtime.export(self.model, self.task.sample_input(2), path,
                                                 transformer=self.task.transformer)
        return self.onnx_path

    def new_path(self, stem: str) -> Path:
        """A fresh file path in the working folder for a step's output."""
        return self.workdir / f"{next(_counter):03d}-{stem}.onnx"

    def then(self, step: str, **changes) -> Candidate:
        """The candidate after `step`: a copy with the step's changes, figures to be measured."""
        details = changes.pop("details", {})
        return dataclasses.replace(self, recipe=self.recipe + (step,), figures=None, validation_metric=None,
                                   details={**details}, **changes)
