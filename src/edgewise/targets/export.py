"""What ships beside ONNX: the target runtime's own format, checked on the host before it is claimed.

ExecuTorch (`.pte`, XNNPACK delegate) is what PyTorch runs on phones and Arm boards. The chosen
model is exported from its torch form: fp32 as it is, int8 through ExecuTorch's own quantizer
(PT2E with the XNNPACK configuration, static activations calibrated on the same calibration
split as the ONNX int8 model, or dynamic). The round trip runs the written program in
ExecuTorch's runtime on held-out samples and compares it with what it must reproduce: the torch
model for fp32, the PT2E-quantized torch model (the same quantization simulated in float) for
int8. A format that fails its check is not written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edgewise.compression.steps import Int8, Int8Dynamic, Step
from edgewise.data import Inputs, iter_batches, num_samples, take
from edgewise.errors import EdgewiseError
from edgewise.files import atomic_path
from edgewise.runtime.torch import as_torch_call, first_tensor
from edgewise.task import Task

FORMATS = {"executorch": "model.pte"}   # one per name in targets.profiles.EXPORTS
CHECK_SAMPLES = 64
FP32_TOLERANCE = 1e-4   # max |exported - torch| relative to the largest output
INT8_STEPS = 2.0        # max |exported - simulated| in output quantization steps (range / 255)


@dataclass
class Exported:
    """One export and its round trip on the host."""

    format: str
    file: str                 # the file name beside model.onnx; "" when not written
    bytes: int
    passed: bool
    quantization: str         # "fp32", "int8" (static) or "int8-dynamic"
    reference: str            # what the exported program was compared with
    samples: int
    max_abs_diff: float
    max_abs_output: float
    tolerance: float
    metric: float | None      # the exported program's task metric on the held-out split
    message: str = ""

    @classmethod
    def refused(cls, format: str, message: str, quantization: str = "") -> Exported:
        nan = float("nan")
        return cls(format, "", 0, False, quantization, "", 0, nan, nan, nan, None, message)

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if not self.passed:
            return f"{self.format}: not written: {self.message}"
        metric = f", held-out metric {self.metric:.4f}" if self.metric is not None else ""
        return (f"{self.format}: {self.file} ({self.bytes / 1e3:.0f} KB, {self.quantization}), round trip on "
                f"{self.samples} held-out samples: max |diff| {self.max_abs_diff:.3g} vs {self.reference} "
                f"(tolerance {self.tolerance:.3g}, largest output {self.max_abs_output:.3g}){metric}")


def check_format(name: str) -> str:
    """`name` if it is a format this build can export to, else one clear error."""
    if name not in FORMATS:
        raise EdgewiseError(f"--export {name}: unknown format; choose one of {', '.join(FORMATS)}")
    if importlib.util.find_spec("executorch") is None or importlib.util.find_spec("torchao") is None:
        raise EdgewiseError("--export executorch needs ExecuTorch: pip install 'edgewise[executorch]'")
    return name


def quantization_of(step: Step | None) -> str:
    """The ExecuTorch quantization that stands for the recipe's last quantization step."""
    if step is None:
        return "fp32"
    if isinstance(step, Int8Dynamic):
        return "int8-dynamic"
    if isinstance(step, Int8):
        return "int8"
    raise EdgewiseError(f"{step.label()}: ExecuTorch export covers fp32, int8 and int8-dynamic recipes here")


@contextlib.contextmanager
def _quiet():
    """torch.export and ExecuTorch print deprecation warnings and C++ logs; keep the CLI readable."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _args(inputs: Inputs) -> tuple:
    args, kwargs = as_torch_call(inputs)
    return (*args, *kwargs.values()) if kwargs else args


class _Primary(torch.nn.Module):
    """The model as ExecuTorch runs it: positional inputs (named ones in the order of `names`), one
    output (the primary one)."""

    def __init__(self, model: torch.nn.Module, names: list[str] | None = None):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        return first_tensor(self.model(**dict(zip(self.names, args))) if self.names else self.model(*args))


def _wrap(model: torch.nn.Module, sample: Inputs) -> torch.nn.Module:
    return _Primary(model, list(sample) if isinstance(sample, dict) else None).eval()


def _quantized(model: torch.nn.Module, task: Task, mode: str, step: Step) -> torch.nn.Module:
    """The PT2E-quantized model (XNNPACK configuration), calibrated on the task's calibration split."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torch.export import Dim
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # Static int8 follows the recipe's granularity; XNNPACK's dynamic kernels take per-channel weights only.
    per_channel = mode == "int8-dynamic" or not getattr(step, "per_tensor", False)
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=mode == "int8-dynamic"))
    if mode == "int8-dynamic":   # activations need no calibration: one call sets the weights' scales
        one = _args(task.sample_input(1))
        prepared = prepare_pt2e(torch.export.export(model, one).module(), quantizer)
        prepared(*one)
        return convert_pt2e(prepared)
    sample = _args(task.sample_input(2))   # batch 2: a batch of 1 would specialise the batch dimension
    dynamic = tuple({0: Dim("batch", min=1, max=4096)} for _ in sample)
    prepared = prepare_pt2e(torch.export.export(model, sample, dynamic_shapes={"args": dynamic}).module(), quantizer)
    for inputs, _ in iter_batches(task.calibration, 64, limit=getattr(step, "samples", 300), where="calibration"):
        prepared(*_args(inputs))
    return convert_pt2e(prepared)


def _program(model: torch.nn.Module, example: tuple) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model, example)   # batch 1: what runs on the device
    return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def _rows(run):
    """`run` (batch-1 positional tensors -> output) applied sample by sample: how the device runs it."""
    def predict(inputs: Inputs) -> np.ndarray:
        return np.concatenate([run(_args(take(inputs, slice(i, i + 1)))) for i in range(num_samples(inputs))])
    return predict


def _run(program: bytes):
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(program).load_method("forward")
    return _rows(lambda args: method.execute(list(args))[0].numpy())


def _reference(model: torch.nn.Module):
    return _rows(torch.no_grad()(lambda args: model(*args).float().numpy()))


def executorch(task: Task, model: torch.nn.Module, step: Step | None, out: str | Path) -> Exported:
    """Export `model` (the chosen candidate's torch form, before ONNX quantization) to
    `out/model.pte`, quantized as `step` asks, and check it on the held-out split."""
    mode = quantization_of(step)
    model = _wrap(model.eval(), task.sample_input(1))
    with _quiet():
        try:
            reference = _quantized(model, task, mode, step) if mode != "fp32" else model
            program = _program(reference, _args(task.sample_input(1)))
            exported = _run(program)
        except EdgewiseError:
            raise
        except Exception as exc:  # torch.export and the XNNPACK lowering refuse many graphs, each its own way
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Exported.refused("executorch", f"ExecuTorch could not export it ({type(exc).__name__}: "
                                                  f"{first[:200]})", mode)
        checked, _ = next(iter_batches(task.eval, CHECK_SAMPLES, limit=CHECK_SAMPLES, where="eval"))
        got, want = exported(checked), _reference(reference)(checked)
        metric = task.evaluate(exported)
    diff = float(np.abs(got - want).max())
    scale = float(np.abs(want).max())
    if mode == "fp32":
        tolerance, reference_name = FP32_TOLERANCE * max(1.0, scale), "the torch model"
    else:
        tolerance = INT8_STEPS * float(want.max() - want.min()) / 255
        reference_name = "the same int8 quantization simulated in torch"
    passed = diff <= tolerance
    file = FORMATS["executorch"]
    message = "" if passed else (f"the round trip missed: max |diff| {diff:.3g} > tolerance {tolerance:.3g} "
                                 f"vs {reference_name}")
    if passed:
        with atomic_path(Path(out) / file) as tmp:
            tmp.write_bytes(program)
    return Exported("executorch", file if passed else "", len(program) if passed else 0, passed, mode,
                    reference_name, len(got), diff, scale, tolerance, metric, message)


def ship(task: Task, model: torch.nn.Module | None, steps: list[Step], formats: list[str],
         out: str | Path) -> list[Exported]:
    """Each format in `formats` for the model a recipe made: `model` is its torch form (before any
    ONNX quantization), `steps` the recipe (its last quantization step says how to quantize)."""
    quant = next((s for s in reversed(steps) if s.stage == "quantize"), None)
    results = []
    for name in formats:
        if model is None:
            results.append(Exported.refused(name, "the model came as an ONNX file; ExecuTorch exports from a torch model"))
            continue
        try:
            results.append(executorch(task, model, quant, out))
        except EdgewiseError as exc:
            results.append(Exported.refused(name, str(exc)))
    return results
