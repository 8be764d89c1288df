"""What a model is made of, as a runtime executes it: its nodes in order, every tensor's shape and
dtype, the weights at their dtypes, and a liveness plan of its activations.

The graph analysed is ONNX Runtime's own after its graph optimisations (level extended: a QDQ model's
QuantizeLinear / DequantizeLinear pairs fused into integer ops, as any int8 runtime runs it, so its
activations between them are int8, not the float the file writes). Shapes are not inferred but
observed: one run with every intermediate tensor exposed, on zeros of the input shapes (free
dimensions 1, a sequence 128), so contrib ops and data-dependent shapes are known too.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgewise.errors import EdgewiseError
from edgewise.runtime import onnx as onnx_runtime

SEQUENCE = 128   # a free dimension named like a sequence; every other free dimension is 1
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
          "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]


@dataclass
class Graph:
    path: Path
    nodes: list[Node]
    tensors: dict[str, Tensor]        # every activation, graph inputs and outputs included
    weights: dict[str, Tensor]        # initializers of the graph as run
    file_weights_bytes: int           # initializers of the file, at their dtypes
    file_bytes: int
    inputs: list[str]
    outputs: list[str]
    feeds: dict[str, np.ndarray]      # what the shapes were observed on

    @property
    def weight_bytes(self) -> int:
        return sum(t.bytes for t in self.weights.values())

    def live_peak(self) -> tuple[int, int]:
        """(bytes, node index) at the peak of the activations alive at once, nodes run in order: a
        tensor lives from the node that makes it (graph inputs: from the start) to the last that reads
        it (graph outputs: to the end). A lower bound on any runtime's arena; planners reach it or a
        little above it (fragmentation)."""
        last: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for name in node.inputs:
                if name in self.tensors:
                    last[name] = i
        end = len(self.nodes)
        for name in self.outputs:
            last[name] = end
        live = {name: self.tensors[name].bytes for name in self.inputs if name in self.tensors}
        for name in self.inputs:
            last.setdefault(name, 0)
        peak, where = sum(live.values()), 0
        for i, node in enumerate(self.nodes):
            for name in node.outputs:
                if name in self.tensors:
                    live[name] = self.tensors[name].bytes
                    last.setdefault(name, i)
            total = sum(live.values())
            if total > peak:
                peak, where = total, i
            for name in [n for n in live if last.get(n, i) <= i]:
                del live[name]
        return peak, where


def _dims(shape, name: str) -> list[int]:
    dims = []
    for d in shape:
        if isinstance(d, int) and d > 0:
            dims.append(d)
        else:
            text = str(d).lower() if d is not None else ""
            dims.append(SEQUENCE if any(w in text for w in ("seq", "length", "token", "time")) else 1)
    return dims


def dummy_feeds(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    feeds = {}
    for i in session.get_inputs():
        if i.type not in _NUMPY:
            raise EdgewiseError(f"input {i.name}: type {i.type} is not supported by the target analysis")
        feeds[i.name] = np.zeros(_dims(i.shape, i.name), _NUMPY[i.type])
    return feeds


def analyse(path: str | Path) -> Graph:
    """The model at `path` as ONNX Runtime runs it (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise EdgewiseError(f"{path}: no such file; give an ONNX model (model.onnx of an edgewise folder)")
    try:
        original = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise EdgewiseError(f"{path}: not an ONNX model, truncated or corrupt ({str(exc).splitlines()[0][:120]}); "
                            "re-export it") from None
    file_weights = sum(_initializer_bytes(t) for t in original.graph.initializer)
    with tempfile.TemporaryDirectory(prefix="edgewise-graph-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        first = onnx_runtime.session(path, 1, check=False, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     optimized_path=optimized)
        feeds = dummy_feeds(first)
        model = onnx.load(str(optimized))
    graph = model.graph
    weights = {t.name: Tensor(t.name, tuple(t.dims), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)))
               for t in graph.initializer}
    nodes = [Node(n.name or f"{n.op_type}_{i}", n.op_type, [x for x in n.input if x], [y for y in n.output if y])
             for i, n in enumerate(graph.node)]
    produced = [y for n in nodes for y in n.outputs]
    outputs = [o.name for o in graph.output]
    exposed = [y for y in produced if y not in outputs]
    del graph.output[len(outputs):]
    for name in exposed:   # every intermediate tensor an output, shape unknown: observed by the run
        graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    names = outputs + exposed
    session = onnx_runtime.session(model.SerializeToString(), 1, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    try:
        values = session.run(names, feeds)
    except Exception as exc:
        raise EdgewiseError(f"{path}: could not run it to observe its tensors ({str(exc).splitlines()[0][:160]})") from None
    tensors = {name: Tensor(name, tuple(np.shape(v)), np.asarray(v).dtype) for name, v in zip(names, values)}
    for name, value in feeds.items():
        tensors[name] = Tensor(name, value.shape, value.dtype)
    return Graph(path, nodes, tensors, weights, file_weights, onnx_runtime.size_bytes(path), list(feeds), outputs,
                 feeds)


def _initializer_bytes(t: onnx.TensorProto) -> int:
    count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
