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


def load_task(example: str | None = None, task_spec: str | None = None, onnx: str | None = None,
              data: str | None = None) -> Task | None:
    """The task named by `--example NAME`, `--task FILE:NAME` or `--onnx MODEL --data DATA.npz`
    (one of them), or None."""
    if sum(bool(x) for x in (example, task_spec, onnx)) > 1:
        raise EdgewiseError("give one of --example, --task or --onnx, not several")
    if bool(onnx) != bool(data):
        raise EdgewiseError("--onnx MODEL and --data DATA.npz go together")
    if onnx:
        return load_onnx_task(onnx, data)
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


LABEL_KEYS = ("y", "labels", "label", "target", "targets")
# Ops that only a quantized graph holds: quantizing such a model again fails inside ORT's tools.
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                 "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulNBits"}


def load_onnx_task(model: str | Path, data: str | Path, max_calibration: int = 300) -> Task:
    """A task from an ONNX file and a .npz of its inputs (named as the model's inputs, or a single
    array `x`), with labels under `y` (accuracy) or without (fidelity to the original outputs).

    The samples are split in two: calibration (at most `max_calibration`) and evaluation.
    """
    import numpy as np

    model, data = Path(model), Path(data)
    quantized = sorted({n.op_type for n in onnx_runtime.load_model(model).graph.node} & QUANTIZED_OPS)
    if quantized:
        raise EdgewiseError(f"{model}: already quantized (it has {', '.join(quantized)}); give the float model "
                            "it was made from")
    sess = onnx_runtime.session(model)
    if not data.is_file():
        raise EdgewiseError(f"{data}: no such file; check the path")
    try:
        with np.load(data, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:   # each layer fails its own way: zipfile, zlib, numpy's header parser, MemoryError
        raise EdgewiseError(f"{data}: not a readable .npz without pickles ({' '.join(str(exc).split())[:100]}); "
                            "save it with numpy.savez(path, x=inputs, y=labels)") from None
    odd = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))   # np.load gives other members as bytes
    if odd:
        raise EdgewiseError(f"{data}: member {odd[0]!r} is not a .npy array; save the file with numpy.savez")
    labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
    names = [i.name for i in sess.get_inputs()]
    if all(n in arrays for n in names):
        inputs = {n: arrays[n] for n in names}
    elif len(names) == 1 and len(arrays) == 1:
        inputs = next(iter(arrays.values()))
    else:
        raise EdgewiseError(f"{data}: holds {sorted(arrays) or 'nothing'}, but {model.name} takes inputs "
                            f"{names}; name the arrays after them (labels as 'y')")
    from edgewise.data import num_samples, take
    count = num_samples(inputs)
    if count < 4:
        raise EdgewiseError(f"{data}: {count} samples; give at least 4 (half calibrate, half evaluate)")
    if labels is not None and (labels.ndim == 0 or len(labels) != count):
        raise EdgewiseError(f"{data}: {count} input samples but {len(labels) if labels.ndim else 'a scalar as'} labels; "
                            "give one label per sample")
    # the model runs once on the first sample: dtypes, arity and shapes fail now, in one line
    onnx_runtime.run_once(sess, take(inputs, slice(0, 1)),
                          f"{model.name} fails on the first sample of {data.name}; check the arrays' shapes "
                          "against the model's inputs")
    split = min(count // 2, max_calibration)
    evaluation = take(inputs, slice(split, None))
    return Task(model, calibration=(take(inputs, slice(0, split)),),
                eval=(evaluation, labels[split:]) if labels is not None else (evaluation,),
                metric="accuracy" if labels is not None else "cosine", name=model.stem)
