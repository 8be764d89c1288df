"""What the search may try for a task, and the recipe a choice of options stands for."""

from __future__ import annotations

from dataclasses import dataclass

from edgewise.compression.distill import _block_stack
from edgewise.compression.quantize import has_matmul_weights
from edgewise.compression.steps import Distill, Int4, Int8, Int8Dynamic, Prune, Step
from edgewise.task import Task

# Quantization modes by name: the step that makes each.
QUANT_MODES: dict[str, Step | None] = {
    "fp32": None,
    "int8": Int8(),
    "int8-percentile": Int8(method="percentile"),
    "int8-entropy": Int8(method="entropy"),
    "int8-per-tensor": Int8(per_tensor=True),
    "int8-dynamic": Int8Dynamic(),
    "int4": Int4(group=32),
}


@dataclass(frozen=True)
class Space:
    """Options per dimension; the first of each is "leave as is"."""

    depth: tuple[float, ...]
    prune: tuple[float, ...]
    quant: tuple[str, ...]

    def recipe(self, depth: float, prune: float, quant: str, distill_epochs: int) -> list[Step]:
        steps: list[Step] = []
        if depth < 1.0:
            steps.append(Distill(depth=depth, epochs=distill_epochs))
        if prune > 0:
            steps.append(Prune(prune, kind="structured"))
        if QUANT_MODES[quant] is not None:
            steps.append(QUANT_MODES[quant])
        return steps


def space_for(task: Task, onnx_path) -> Space:
    """Only what applies: torch steps need a torch model and a train split; static int8 needs
    calibration data; int4 needs MatMul weights; distillation by depth needs repeated blocks."""
    torch_ok = not task.is_onnx and task.train is not None
    depth = (1.0,)
    if torch_ok and _block_stack(task.model) is not None:
        depth = (1.0, 0.67, 0.5)
    prune = (0.0, 0.3, 0.5, 0.7) if torch_ok and not task.transformer else (0.0,)
    quant = ["fp32", "int8-dynamic"]
    if task.calibration is not None and not task.transformer:
        quant[1:1] = ["int8", "int8-percentile", "int8-entropy", "int8-per-tensor"]
    if has_matmul_weights(onnx_path):
        quant.append("int4")
    return Space(depth, prune, tuple(quant))
