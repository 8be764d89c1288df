"""Turn what a user names on the command line (an ONNX file, an example, weights) into models."""

from __future__ import annotations

import copy
from pathlib import Path

from edgewise.errors import EdgewiseError
from edgewise.examples import EXAMPLES, load_example
from edgewise.measure.bench import BenchTarget
from edgewise.runtime import onnx as onnx_runtime
from edgewise.runtime import torch as torch_runtime
from edgewise.task import Task, load_task_file

WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")


def load_task(example: str | None = None, task_spec: str | None = None) -> Task | None:
    """The task named by `--example NAME` or `--task FILE:NAME` (not both), or None."""
    if example and task_spec:
        raise EdgewiseError("give --example or --task, not both")
    if example:
        return load_example(example)
    if task_spec:
        return load_task_file(task_spec)
    return None


def resolve_targets(specs: list[str], task: Task | None, workdir: Path) -> list[BenchTarget]:
    """BenchTargets for each spec: an .onnx file, an example name, or weights for the task's model.

    With no specs, the task's own model. Exports land in `workdir`, each checked against torch.
    """
    if not specs:
        if task is None:
            raise EdgewiseError("name a model (an .onnx file or an example: "
                                f"{', '.join(EXAMPLES)}) or give --example NAME")
        return [_export(task, task.name, workdir)]
    targets = []
    for spec in specs:
        path = Path(spec)
        if path.suffix == ".onnx":
            onnx_runtime.load_model(path)
            targets.append(BenchTarget(path.name, path, task))
        elif path.suffix in WEIGHT_SUFFIXES:
            if task is None or task.is_onnx:
                raise EdgewiseError(f"{spec}: weights need an architecture; add --example NAME or --task FILE:NAME")
            model = torch_runtime.load_state(copy.deepcopy(task.model), path).eval()
            targets.append(_export(_with_model(task, model), path.name, workdir))
        elif spec in EXAMPLES and not path.exists():
            example_task = task if task is not None and task.name == spec else load_example(spec)
            targets.append(_export(example_task, spec, workdir))
        else:
            raise EdgewiseError(f"{spec}: not an .onnx file, a weights file ({', '.join(WEIGHT_SUFFIXES)}) "
                                f"or an example ({', '.join(EXAMPLES)})")
    return targets


def _with_model(task: Task, model) -> Task:
    clone = copy.copy(task)
    clone.model = model
    clone._reference = task._reference  # fidelity stays measured against the original model
    return clone


def _export(task: Task, name: str, workdir: Path) -> BenchTarget:
    path, error = onnx_runtime.export_task(task, workdir / f"{Path(name).stem}.onnx")
    return BenchTarget(name, path, task, export_max_abs_error=error)
