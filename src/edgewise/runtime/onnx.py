"""torch -> ONNX export and ONNX Runtime sessions: the deployment path."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError

from edgewise.data import Inputs, concat, num_samples, take
from edgewise.errors import EdgewiseError
from edgewise.files import atomic_path
from edgewise.runtime import torch as torch_runtime

OPSET = 17

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def _input_names(inputs: Inputs) -> list[str]:
    if isinstance(inputs, Mapping):
        return list(inputs)
    if isinstance(inputs, (tuple, list)):
        return [f"input_{i}" for i in range(len(inputs))]
    return ["input"]


def _dynamic_axes(inputs: Inputs, names: list[str]) -> dict[str, dict[int, str]]:
    arrays = list(inputs.values()) if isinstance(inputs, Mapping) else (
        list(inputs) if isinstance(inputs, (tuple, list)) else [inputs])
    axes = {}
    for name, array in zip(names, arrays):
        axes[name] = {0: "batch"}
        if np.issubdtype(np.asarray(array).dtype, np.integer) and np.ndim(array) == 2:
            axes[name][1] = "sequence"  # token ids and masks: any length
    axes["output"] = {0: "batch"}
    return axes


def export(model: torch.nn.Module, example_input: Inputs, path: str | Path, *,
           transformer: dict | None = None) -> Path:
    """Export `model` to ONNX (opset 17, dynamic batch) and write it atomically to `path`.

    Args:
        example_input: numpy inputs in edgewise's structure (array, tuple or dict of arrays).
        transformer: for BERT-like models, `{"model_type": "bert", "num_heads": H, "hidden_size": D}`:
            the graph is then fused with ONNX Runtime's transformer optimizer (Attention,
            SkipLayerNormalization, BiasGelu). Attention must be in eager form for the fusions.
    Returns:
        The path written.
    """
    path = Path(path)
    model.eval()
    args, kwargs = torch_runtime.as_torch_call(example_input)
    names = _input_names(example_input)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript exporter emits attention in the pattern ORT's fusions recognise.
            torch.onnx.export(model, args, str(tmp), kwargs=kwargs or None, input_names=names,
                              output_names=["output"], dynamic_axes=_dynamic_axes(example_input, names),
                              opset_version=OPSET, dynamo=False, do_constant_folding=True)
        except Exception as exc:
            raise EdgewiseError(f"could not export {type(model).__name__} to ONNX: "
                                f"{' '.join(str(exc).split())[:300]}") from None
        if transformer:
            _fuse_transformer(tmp, transformer)
    return path


def _fuse_transformer(path: Path, transformer: dict) -> None:
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    logging.disable(logging.INFO)  # the optimizer logs every fusion at INFO
    try:
        fused = optimize_model(str(path), model_type=transformer["model_type"],
                               num_heads=transformer["num_heads"], hidden_size=transformer["hidden_size"],
                               opt_level=0)
        fused.save_model_to_file(str(path))
    finally:
        logging.disable(logging.NOTSET)


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file; a missing, truncated or corrupt file is an EdgewiseError."""
    path = Path(path)
    if not path.is_file():
        raise EdgewiseError(f"{path}: no such file; check the path")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError, OSError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise EdgewiseError(f"{path}: not a valid ONNX model, truncated or corrupt ({first}); "
                            "re-export it") from None
    if not model.graph.node:
        raise EdgewiseError(f"{path}: the ONNX graph has no nodes; re-export the model")
    return model


def session(path: str | Path | bytes, threads: int | None = None, check: bool = True,
            level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            profile_prefix: str | None = None, optimized_path: str | Path | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with graph optimisations at `level` (default all) and `threads`
    intra-op threads. `check=False` leaves the file to ONNX Runtime alone (a server: the checker holds
    a second copy of every weight while it runs). `path` may be a serialized model. `profile_prefix`
    turns ONNX Runtime's per-node profiler on; `optimized_path` saves the graph as optimised."""
    name = "the model" if isinstance(path, bytes) else str(path)
    if isinstance(path, bytes):
        pass
    elif check:
        load_model(path)
    elif not Path(path).is_file():
        raise EdgewiseError(f"{path}: no such file; check the path")
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EdgewiseError(f"{name}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]}); re-export it, "
                            "with ops this ONNX Runtime knows") from None


def feed(sess: ort.InferenceSession, inputs: Inputs) -> dict[str, np.ndarray]:
    """Map edgewise inputs onto the session's inputs, by name for dicts, by position otherwise."""
    specs = sess.get_inputs()
    if isinstance(inputs, Mapping):
        missing = [s.name for s in specs if s.name not in inputs]
        if missing:
            raise EdgewiseError(f"inputs lack {missing}; the model takes {[s.name for s in specs]}")
        arrays = [inputs[s.name] for s in specs]
    else:
        arrays = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
        if len(arrays) != len(specs):
            raise EdgewiseError(f"the model takes {len(specs)} inputs ({[s.name for s in specs]}), "
                                f"the data has {len(arrays)}")
    return {s.name: np.ascontiguousarray(a, dtype=_ORT_TYPES.get(s.type, None)) for s, a in zip(specs, arrays)}


def run_once(sess: ort.InferenceSession, inputs: Inputs, failure: str) -> dict[str, np.ndarray]:
    """The session's feed of `inputs`, after one run of the model on it: where that fails (shapes,
    types, a broken graph), one line, `failure` followed by the reason, instead of a traceback
    mid-measurement."""
    try:
        batch = feed(sess, inputs)
        sess.run(None, batch)
    except EdgewiseError:
        raise
    except Exception as exc:
        raise EdgewiseError(f"{failure} ({' '.join(str(exc).split())[:160]})") from None
    return batch


def predict(sess: ort.InferenceSession, inputs: Inputs, batch_size: int = 64) -> np.ndarray:
    """The first output of the session on `inputs`, batched."""
    outputs = []
    for start in range(0, num_samples(inputs), batch_size):
        batch = feed(sess, take(inputs, slice(start, start + batch_size)))
        outputs.append(sess.run(None, batch)[0])
    return concat(outputs)


def max_abs_error(model: torch.nn.Module, sess: ort.InferenceSession, inputs: Inputs) -> float:
    """Largest absolute difference between torch's and ORT's primary outputs on `inputs`."""
    expected = torch_runtime.predict(model, inputs)
    actual = predict(sess, inputs)
    return float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64))))


def size_bytes(path: str | Path) -> int:
    """Bytes on disk of the model, external data files included."""
    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for init in model.graph.initializer for entry in init.external_data
                 if entry.key == "location"}
    return total + sum((path.parent / loc).stat().st_size for loc in locations)


_WEIGHT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                 onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


def count_params(path: str | Path) -> int:
    """Weight elements in the graph's initializers (shape and index constants excluded).

    Packed 4-bit weights (MatMulNBits) count two parameters per byte.
    """
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        if init.data_type in _WEIGHT_TYPES:
            total += int(np.prod(init.dims)) if init.dims else 1
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            total += attrs.get("K", 0) * attrs.get("N", 0) - _packed_bytes(model, node.input[1])
    return total


def _packed_bytes(model: onnx.ModelProto, name: str) -> int:
    for init in model.graph.initializer:
        if init.name == name:
            return int(np.prod(init.dims))
    return 0


def export_task(task, path: str | Path, check_samples: int = 8) -> tuple[Path, float]:
    """Export a task's torch model to `path` and check ORT against torch on eval samples.

    Returns:
        The ONNX path and the max abs error between ORT's and torch's outputs. For a task whose
        model is already ONNX, that file and 0.0.
    """
    if task.is_onnx:
        return task.model, 0.0
    path = export(task.model, task.sample_input(2), path, transformer=task.transformer)
    inputs = task.sample_input(check_samples)
    return path, max_abs_error(task.model, session(path), inputs)
