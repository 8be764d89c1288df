"""Recipe steps: a config dataclass per technique, each applied as Candidate -> Candidate."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import onnxruntime as ort

from edgewise.compression import distill, prune, quantize
from edgewise.compression.candidate import Candidate
from edgewise.compression.sensitivity import Tolerance, guarded, score_onnx
from edgewise.data import is_array_split
from edgewise.errors import EdgewiseError
from edgewise.runtime import torch as torch_runtime
from edgewise.train import classification_loss, fidelity_loss, fit

STAGES = {"distill": 0, "prune": 1, "quantize": 2}


@dataclass(frozen=True)
class Step:
    """Base of all steps. `name` is the recipe word; `stage` orders distill -> prune -> quantize."""

    name: ClassVar[str] = ""
    stage: ClassVar[str] = ""
    key_options: ClassVar[tuple[str, ...]] = ()  # always shown in the label

    def label(self) -> str:
        """The step as it reads in a recipe string, with its key options and those changed."""
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.init and f.repr
                   and getattr(self, f.name) is not None
                   and (getattr(self, f.name) != f.default or f.name in self.key_options)]
        return f"{self.name}({','.join(changed)})" if changed else self.name

    def apply(self, candidate: Candidate) -> Candidate:
        raise TypeError(f"{type(self).__name__} does not define apply")

    def _require(self, option: str, ok: bool, expected: str) -> None:
        """Options are checked when a step is made (a recipe parsed), before any model trains."""
        if not ok:
            raise EdgewiseError(f"{self.name}: {option}={getattr(self, option)!r} is not valid; {option} must be {expected}")


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _fraction(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and 0 < value < 1)


def _labels_in(split: Any) -> bool:
    if split is None:
        return False
    if is_array_split(split):
        return len(split) == 2 and split[1] is not None
    return True  # iterables of batches: classification loss will say if a batch lacks labels


def _torch_model(candidate: Candidate, step: str) -> torch.nn.Module:
    if candidate.model is None:
        raise EdgewiseError(f"{step} works on a torch model: put it before quantization in the recipe "
                            "(distill -> prune -> quantize), and give a torch.nn.Module, not an ONNX file")
    return candidate.model


def _task_loss(candidate: Candidate, teacher: torch.nn.Module):
    return classification_loss if _labels_in(candidate.task.train) else fidelity_loss(teacher)


@dataclass(frozen=True)
class Distill(Step):
    """Train a smaller student to mimic the current model.

    Args:
        depth: fraction of the repeated blocks (transformer layers) the student keeps.
        width: fraction of parameters then removed by structured pruning of the student.
        student: a ready student model instead of deriving one.
        match: "auto" (KD with labels, cosine without), "kd", "cosine" or "mse".
        train_embeddings: also train the embedding tables (frozen by default: see
            `distill.frozen_embeddings`).
        max_steps: training ends after this many batches if `epochs` has not ended it: on a
            large training split (MiniLM's 34,000 texts) a few passes, on a small one all epochs.
    """

    name: ClassVar[str] = "distill"
    stage: ClassVar[str] = "distill"
    key_options: ClassVar[tuple[str, ...]] = ("depth", "width")
    depth: float | None = 0.5
    width: float | None = None
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 32
    temperature: float = 2.0
    alpha: float = 0.5
    match: str = "auto"
    patience: int = 2
    max_steps: int = 2000
    train_embeddings: bool = False
    student: torch.nn.Module | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._require("depth", _fraction(self.depth), "a fraction of the layers, between 0 and 1")
        self._require("width", _fraction(self.width), "a fraction of the parameters, between 0 and 1")
        self._require("epochs", self.epochs >= 1, "a whole number >= 1")
        self._require("lr", _positive(self.lr), "a positive number, e.g. 1e-4")
        self._require("batch_size", self.batch_size >= 1, "a whole number >= 1")
        self._require("temperature", _positive(self.temperature), "a positive number, e.g. 2")
        self._require("alpha", 0 <= self.alpha <= 1, "between 0 and 1 (the weight of the hard labels)")
        self._require("match", self.match in ("auto", "kd", "cosine", "mse"), "auto, kd, cosine or mse")
        self._require("patience", self.patience >= 1, "a whole number of epochs >= 1")
        self._require("max_steps", self.max_steps >= 1, "a whole number >= 1")

    def apply(self, candidate: Candidate) -> Candidate:
        teacher, task = _torch_model(candidate, "distill"), candidate.task
        if task.train is None:
            raise EdgewiseError("distill needs training inputs: give Task(train=(X,)) or (X, y)")
        student = copy.deepcopy(self.student) if self.student is not None else (
            distill.shallower(teacher, self.depth) if self.depth else copy.deepcopy(teacher))
        if self.width:
            student = prune.structured(student, task.sample_input(2), self.width, transformer=task.transformer)
        labelled = _labels_in(task.train)
        match = ("kd" if labelled else "cosine") if self.match == "auto" else self.match
        cached = distill.with_teacher_outputs(teacher, task.train) if match in ("cosine", "mse") else None
        if cached is not None:  # targets computed once: each epoch then runs the student only
            train, loss = cached, distill.matching_loss(match)
        else:
            train, loss = task.train, distill.distill_loss(teacher, labelled, match, self.temperature, self.alpha)
        frozen = [] if self.train_embeddings else distill.frozen_embeddings(student)
        result = fit(student, train, loss_fn=loss, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                     patience=self.patience, max_steps=self.max_steps, description=f"distilling ({self.label()})",
                     score_fn=lambda m: task.evaluate(lambda x: torch_runtime.predict(m, x)))
        for parameter in frozen:
            parameter.requires_grad_(True)
        return candidate.then(self.label(), model=student, onnx_path=None, details={
            "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
            "params_teacher": torch_runtime.count_params(teacher), "params_student": torch_runtime.count_params(student)})


@dataclass(frozen=True)
class Prune(Step):
    """Remove parameters: `amount` is the fraction of parameters.

    Args:
        kind: "structured" (channels/neurons/heads removed: smaller and faster), "unstructured"
            (smallest weights zeroed globally; size only), "layer" (per layer) or "2:4".
        importance: "magnitude" or "taylor" (gradients of the task loss), for structured.
        steps: gradual rounds, each followed by `finetune_epochs` on the train split.
    """

    name: ClassVar[str] = "prune"
    stage: ClassVar[str] = "prune"
    key_options: ClassVar[tuple[str, ...]] = ("amount", "kind")
    amount: float = 0.5
    kind: str = "structured"
    importance: str = "magnitude"
    steps: int = 3
    finetune_epochs: int = 3
    lr: float = 5e-4

    def __post_init__(self) -> None:
        self._require("kind", self.kind in ("structured", "unstructured", "layer", "2:4"),
                      "structured, unstructured, layer or 2:4")
        self._require("amount", self.kind == "2:4" or _fraction(self.amount), "a fraction between 0 and 1")
        self._require("importance", self.importance in ("magnitude", "taylor"), "magnitude or taylor")
        self._require("steps", self.steps >= 1, "a whole number >= 1")
        self._require("finetune_epochs", self.finetune_epochs >= 0, "a whole number >= 0")
        self._require("lr", _positive(self.lr), "a positive number, e.g. 5e-4")

    def apply(self, candidate: Candidate) -> Candidate:
        model, task = _torch_model(candidate, "prune"), candidate.task
        teacher = copy.deepcopy(model).eval()
        loss = _task_loss(candidate, teacher)
        finetune = None
        if task.train is not None and self.finetune_epochs > 0:
            def finetune(m: torch.nn.Module) -> None:
                fit(m, task.train, loss_fn=loss, epochs=self.finetune_epochs, lr=self.lr,
                    description=f"fine-tuning ({self.label()})")
        if self.kind == "structured":
            pruned = prune.structured(model, task.sample_input(2), self.amount, importance=self.importance,
                                      steps=self.steps, finetune=finetune,
                                      gradients=self._gradients(task, loss) if task.train is not None else None,
                                      transformer=task.transformer)
            details = {"params_before": torch_runtime.count_params(model),
                       "params_after": torch_runtime.count_params(pruned)}
        else:
            kind = "global" if self.kind == "unstructured" else self.kind
            pruned, details = prune.unstructured(model, self.amount, kind=kind, finetune=finetune)
            details["note"] = "zeros shrink the compressed artifact; dense kernels run no faster"
        if finetune is None:
            details["finetuned"] = False
        return candidate.then(self.label(), model=pruned, onnx_path=None, details=details)

    @staticmethod
    def _gradients(task, loss):
        from edgewise.data import iter_batches

        def accumulate(model: torch.nn.Module) -> None:
            model.train()
            for inputs, labels in iter_batches(task.train, 64, limit=256, where="train"):
                loss(model, inputs, torch.from_numpy(labels) if labels is not None else None).backward()
            model.eval()
        return accumulate


@dataclass(frozen=True)
class _Quantize(Step):
    stage: ClassVar[str] = "quantize"
    max_drop: str | None = None   # "0.5" points or "1%": turns on the accuracy guard

    def __post_init__(self) -> None:
        if self.max_drop is not None:
            try:
                Tolerance.parse(self.max_drop)
            except EdgewiseError:
                self._require("max_drop", False, "a number of points (0.5) or a percentage (2%)")

    def quantize(self, candidate: Candidate, src, dst, exclude=(), include=None):
        raise TypeError(f"{type(self).__name__} does not define quantize")

    def apply(self, candidate: Candidate) -> Candidate:
        src = candidate.onnx()
        dst = candidate.new_path(self.name)
        run = lambda s, d, exclude=(), include=None: self.quantize(candidate, s, d, exclude, include)  # noqa: E731
        float_model = candidate.model if candidate.model is not None else candidate.float_model
        if self.max_drop is None:
            return candidate.then(self.label(), model=None, float_model=float_model, onnx_path=run(src, dst))
        tolerance = Tolerance.parse(self.max_drop)
        baseline = candidate.baseline_metric if candidate.baseline_metric is not None else score_onnx(candidate.task, src)
        result = guarded(candidate.task, src, dst, run, tolerance, baseline)
        details = {"tolerance": str(tolerance), "drop": result.drop, "tolerance_met": result.met,
                   "kept_float": result.kept_float, "sensitivity": result.sensitivity}
        if result.message:
            details["message"] = result.message
        return candidate.then(self.label(), model=None, float_model=float_model, onnx_path=result.path,
                              details=details)


@dataclass(frozen=True)
class Int8(_Quantize):
    """Int8 static (QDQ): weights per channel, activations calibrated on the calibration split."""

    name: ClassVar[str] = "int8"
    method: str = "minmax"
    per_tensor: bool = False
    samples: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("method", self.method in quantize.CALIBRATION_METHODS, ", ".join(quantize.CALIBRATION_METHODS))
        self._require("samples", self.samples >= 1, "a whole number >= 1")

    def quantize(self, candidate, src, dst, exclude=(), include=None):
        return quantize.int8_static(src, dst, candidate.task.calibration, samples=self.samples, method=self.method,
                                    per_channel=not self.per_tensor, exclude=exclude, include=include)


@dataclass(frozen=True)
class Int8Dynamic(_Quantize):
    """Int8 weights per channel, activations quantized at run time (no calibration)."""

    name: ClassVar[str] = "int8-dynamic"
    per_tensor: bool = False

    def quantize(self, candidate, src, dst, exclude=(), include=None):
        return quantize.int8_dynamic(src, dst, per_channel=not self.per_tensor, exclude=exclude, include=include)


@dataclass(frozen=True)
class Int4(_Quantize):
    """Weight-only int4, group-wise (MatMulNBits), for linear layers of transformers and LLMs."""

    name: ClassVar[str] = "int4"
    group: int = 32
    bits: ClassVar[int] = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        # MatMulNBits takes blocks of 16, 32, 64 ... inputs.
        self._require("group", self.group >= 16 and self.group & (self.group - 1) == 0, "a power of two >= 16")

    def quantize(self, candidate, src, dst, exclude=(), include=None):
        return quantize.weight_only(src, dst, bits=self.bits, block_size=self.group, exclude=exclude, include=include)


@dataclass(frozen=True)
class Int8Weight(Int4):
    """Weight-only int8, group-wise (MatMulNBits with 8 bits)."""

    name: ClassVar[str] = "int8-weight"
    group: int = 128
    bits: ClassVar[int] = 8


@dataclass(frozen=True)
class Bf16(_Quantize):
    """bf16 weights and compute, where the deployment runtime has bf16 kernels."""

    name: ClassVar[str] = "bf16"

    def apply(self, candidate: Candidate) -> Candidate:
        # ORT's CPU provider has no bf16 MatMul (ort_has_bf16_matmul() says so, and a test keeps
        # that claim true): a bf16 ONNX model would not run where edgewise ships it.
        raise EdgewiseError("bf16: ONNX Runtime's CPU provider has no bf16 MatMul kernel, so a bf16 model "
                            "would not run where it ships; use int8 or int4 (torch bf16 is compared in "
                            "benchmarks/runtimes.py)")


def ort_has_bf16_matmul() -> bool:
    """Whether ONNX Runtime's CPU provider can run a bf16 MatMul (probed with a 2x2 graph)."""
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "a"], ["b"])], "probe",
        [helper.make_tensor_value_info("a", TensorProto.BFLOAT16, [2, 2])],
        [helper.make_tensor_value_info("b", TensorProto.BFLOAT16, [2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


STEPS: dict[str, type[Step]] = {s.name: s for s in (Distill, Prune, Int8, Int8Dynamic, Int4, Int8Weight, Bf16)}
