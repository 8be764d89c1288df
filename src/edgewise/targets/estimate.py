"""Latency and energy on a device edgewise does not run on: a kernel-additive roofline, calibrated.

Each node of the graph ONNX Runtime runs costs `max(ops / peak, bytes / bandwidth) / efficiency +
overhead`: ops and bytes from the node's own shapes (ONNX Runtime's per-node profile reports them),
the peak of the node's dtype and the bandwidth from the target's profile, the efficiency per kind of
node (how far from the roofline ONNX Runtime's kernels run) and the per-node and per-run overheads
measured on the host (calibrate.py). A model's latency is the sum over its nodes; energy is the
target's active power x that time. Every figure is an estimate and carries the error band measured on
the host (leave-one-family-out, benchmarks/targets.py).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgewise.measure.latency import interleaved
from edgewise.runtime import onnx as onnx_runtime

# Nodes whose arithmetic is multiply-adds over a reduction (2 ops each); the rest is one op per output
# element (ELEMENTWISE_OPS more for transcendental ones).
CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcConv", "ConvTranspose"}
MATMUL_OPS = {"MatMul", "FusedMatMul", "Gemm", "QGemm", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
              "MatMulIntegerToFloat", "MatMulNBits", "FusedGemm"}
INT8_OPS = {"QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
            "MatMulIntegerToFloat", "MatMulNBits"}
SEPARATE_INT8 = {"ConvInteger"}   # far slower than QLinearConv here; the dynamic matmuls run as fast as QGemm
HEAVY_ELEMENTWISE = {"Softmax": 5, "LayerNormalization": 8, "SkipLayerNormalization": 8, "Gelu": 8, "FastGelu": 8,
                     "BiasGelu": 8, "Erf": 8, "Tanh": 4, "Sigmoid": 4, "Exp": 4}
_SIZES = {"float": 4, "double": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
          "uint8": 1, "bool": 1, "uint16": 2, "uint32": 4, "uint64": 8}
MEMORY_EFFICIENCY = 0.7   # of a target's theoretical bandwidth that streaming reaches (STREAM-like, typical)


@dataclass(frozen=True)
class NodeWork:
    name: str
    op: str
    ops: float       # arithmetic operations
    bytes: float     # bytes read and written
    dtype: str       # "int8" or "fp32": which peak bounds it
    us: float = 0.0  # measured on the host (profile), when known
    depthwise: bool = False
    vector: bool = False         # a matmul of one row (matrix-vector): another kernel than a matrix product
    model_weights: float = 0.0   # bytes of all the model's weights: whether they stay in a cache between runs

    @property
    def kind(self) -> str:
        """What the fitted efficiencies are kept by: convolutions (depthwise apart) and matmuls by dtype,
        ConvInteger (dynamic quantization) by its own name (its kernels run far from QLinearConv's),
        every other op by its name; depthwise convolutions and one-row matmuls (matrix-vector) apart."""
        if self.op in SEPARATE_INT8:
            cls = ("dw" if self.depthwise else "") + self.op
        elif self.op in CONV_OPS:
            cls = "dwconv" if self.depthwise else "conv"
        elif self.op in MATMUL_OPS:
            cls = "gemv" if self.vector else "matmul"
        else:
            cls = self.op
        return f"{cls}/{self.dtype}"


def _shapes(entries) -> list[tuple[str, list[int]]]:
    out = []
    for entry in entries or ():
        for dtype, shape in entry.items():
            out.append((dtype, [int(d) for d in shape]))
    return out


def _elements(shape: list[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _channels(ins, outs, filters: int) -> int:
    """A convolution's input channels, in whichever layout the output has its `filters` channels
    (NCHW: axis 1; NHWC, as ONNX Runtime runs QLinearConv on x86: the last)."""
    x = ins[0][1] if ins else []
    y = outs[0][1] if outs else []
    if len(x) < 3 or len(x) != len(y):
        return 2   # unknown: as a depthwise filter bank says
    if y[1] == filters and y[-1] == filters:   # either layout: a one-channel input has the fewer
        return min(x[1], x[-1])
    return x[1] if y[1] == filters else x[-1]


def node_work(name: str, op: str, inputs, outputs, us: float = 0.0, weights=()) -> NodeWork:
    """The arithmetic and traffic of one node from its input and output [{dtype: shape}] lists (as
    ONNX Runtime's profiler reports them) and its weights [(dtype, shape)] from the graph: the profiler
    leaves out a weight ONNX Runtime has pre-packed."""
    ins, outs = _shapes(inputs), _shapes(outputs)
    listed = [(t, tuple(s)) for t, s in ins]
    extra = []
    for dtype, dims in weights:
        if (dtype, tuple(dims)) in listed:
            listed.remove((dtype, tuple(dims)))
        else:
            extra.append((dtype, list(dims)))
    out_elements = sum(_elements(s) for _, s in outs)
    moved = sum(_elements(s) * _SIZES.get(t, 4) for t, s in ins + outs + extra)
    depthwise = vector = False
    if op in CONV_OPS:
        kernels = [s for _, s in ins[1:] + extra if len(s) >= 3]
        per_output = _elements(kernels[0]) / kernels[0][0] if kernels else 1   # Cin / groups x kh x kw
        # one input channel per filter, out of several: the filters of a one-channel input (digits'
        # first layer) are a plain convolution, which ONNX Runtime runs as one GEMM, not one per channel
        depthwise = bool(kernels) and kernels[0][1] == 1 and kernels[0][0] > 1 and _channels(ins, outs, kernels[0][0]) > 1
        ops = 2.0 * out_elements * per_output
    elif op in MATMUL_OPS and ins:
        reduction = ins[0][1][-1] if ins[0][1] else 1
        ops = 2.0 * out_elements * reduction
        vector = _elements(ins[0][1]) <= reduction   # one row of activations
    else:
        ops = float(out_elements * HEAVY_ELEMENTWISE.get(op, 1))
    return NodeWork(name, op, ops, float(moved), "int8" if op in INT8_OPS else "fp32", us, depthwise, vector)


_ONNX_TYPES = {1: "float", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
               11: "double", 16: "bfloat16"}


def _graph_weights(optimized: Path) -> dict[str, list[tuple[str, list[int]]]]:
    """Node name -> the (dtype, shape) of each initializer it reads, in the graph ONNX Runtime saved."""
    import onnx

    model = onnx.load(str(optimized), load_external_data=False)
    inits = {t.name: (_ONNX_TYPES.get(t.data_type, "float"), list(t.dims)) for t in model.graph.initializer}
    return {n.name: [inits[i] for i in n.input if i in inits] for n in model.graph.node}


def read_profile(path: str | Path, weights: dict | None = None) -> list[NodeWork]:
    """Per-node work and the median time of each node over the profiled runs."""
    events = json.loads(Path(path).read_text())
    times: dict[str, list[float]] = {}
    first: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        key = f"{e['args'].get('node_index', '')}:{e['name']}"
        times.setdefault(key, []).append(float(e["dur"]))
        first.setdefault(key, e)
    nodes = []
    for key, e in first.items():
        args, name = e["args"], e["name"][: -len("_kernel_time")]
        nodes.append(node_work(name, args.get("op_name", "?"), args.get("input_type_shape"),
                               args.get("output_type_shape"), statistics.median(times[key]),
                               (weights or {}).get(name, ())))
    return nodes


def _profiled(path: Path | bytes, threads: int, runs: int, feeds=None) -> list[NodeWork]:
    from edgewise.targets.graph import dummy_feeds

    with tempfile.TemporaryDirectory(prefix="edgewise-profile-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        session = onnx_runtime.session(path, threads, check=False, profile_prefix=str(Path(tmp) / "ort"),
                                       optimized_path=optimized)
        feeds = feeds if feeds is not None else dummy_feeds(session)
        for _ in range(runs + 2):   # the first runs warm up: their times fall in the medians' tails
            session.run(None, feeds)
        weights = _graph_weights(optimized)
        nodes = read_profile(session.end_profiling(), weights)
    total = float(sum(_elements(d) * _SIZES.get(t, 4) for ws in weights.values() for t, d in ws))
    return [replace(n, model_weights=total) for n in nodes]


@functools.cache
def profiler_cost_us(threads: int) -> float:
    """What ONNX Runtime's profiler adds to each node's reported time (about 8 us here): a chain of
    tiny Adds profiled, against the same chain's time per node without the profiler."""
    from edgewise.targets.calibrate import chain_model

    model, x = chain_model(200)
    profiled = _profiled(model, threads, 10, {"x": x})
    per_node = _per_node_s(threads) * 1e6
    return max(statistics.median(n.us for n in profiled) - per_node, 0.0)


@functools.cache
def _per_node_s(threads: int) -> float:
    from edgewise.targets.calibrate import overheads_s

    return overheads_s(threads=threads)[0]


def profile(path: str | Path, threads: int | None = None, runs: int = 10) -> tuple[list[NodeWork], float]:
    """The nodes ONNX Runtime runs for the model at `path` (all graph optimisations, as it ships), each
    with its work and its median time over `runs` on this machine; and the model's median latency in
    seconds without the profiler. The profiler adds a cost to every node's time (about 8 us here, more
    than a small node takes): it is taken off evenly, so that the nodes add up to that latency, and
    never more than twice what it adds to a chain of tiny nodes."""
    threads = threads or os.cpu_count() or 1
    seconds = latency_ms(path, threads, seconds=0.3) / 1e3   # first: a file ORT cannot load fails without the profiler
    nodes = _profiled(Path(path), threads, runs)
    cap = 2 * profiler_cost_us(threads)
    excess = (sum(n.us for n in nodes) - (seconds - _run_overhead_s(threads)) * 1e6) / max(len(nodes), 1)
    cost = min(max(excess, 0.0), cap)
    return [replace(n, us=max(n.us - cost, 0.05)) for n in nodes], seconds


@functools.cache
def _run_overhead_s(threads: int) -> float:
    from edgewise.targets.calibrate import overheads_s

    return overheads_s(threads=threads)[1]


def latency_ms(path: str | Path, threads: int | None = None, seconds: float = 1.0) -> float:
    """Median end-to-end latency of one inference on ONNX Runtime here (no profiler on)."""
    from edgewise.targets.graph import dummy_feeds

    session = onnx_runtime.session(Path(path), threads, check=False)
    feeds = dummy_feeds(session)
    [timing] = interleaved([lambda: session.run(None, feeds)], seconds=seconds)
    return timing.percentiles_ms().p50


@dataclass
class Machine:
    """What the roofline divides by: peaks in ops/s per dtype, bandwidth in B/s, overheads in s."""

    peak: dict[str, float]
    bandwidth: float
    node_overhead: float
    run_overhead: float
    cache_bytes: float = 0.0       # the last-level cache
    cache_bandwidth: float = 0.0


@dataclass
class Efficiency:
    """How a kind of node runs against the roofline: it takes its fixed cost plus
    max(ops / (peak x compute), bytes / (bandwidth x memory)). The fixed cost is the median of what its
    nodes took beyond their roofline time (dispatch to the thread pool, layout checks: starting from the
    smallest time one took, refined twice with the efficiencies); `compute` is fitted on the nodes the roofline calls compute-bound and `memory` on
    the memory-bound ones, each only on nodes whose ideal time is at least their fixed cost (the rest
    say nothing of the kernel's speed). What a kind lacks comes from `default`, fitted on every node."""

    by_kind: dict[str, dict[str, float]]    # kind -> {"overhead": s, "compute": e, "memory": e}, any may be missing
    default: dict[str, float]

    def of(self, kind: str, what: str) -> float:
        """The figure of `kind`, else of its nearest relative that has one (a depthwise convolution's
        of a convolution's, an int8 kind's of its fp32 form's), else the default."""
        cls, _, dtype = kind.partition("/")
        relative = {"dwconv": f"conv/{dtype}", "ConvInteger": f"conv/{dtype}", "dwConvInteger": f"ConvInteger/{dtype}",
                    "gemv": f"matmul/{dtype}"}.get(cls)
        for candidate in (kind, relative, f"{cls}/fp32" if dtype != "fp32" else None):
            if candidate and what in self.by_kind.get(candidate, {}):
                return self.by_kind[candidate][what]
        return self.default[what]

    def to_json(self) -> dict:
        return {"by_kind": self.by_kind, "default": self.default}

    @classmethod
    def from_json(cls, raw: dict) -> Efficiency:
        return cls({k: dict(v) for k, v in raw["by_kind"].items()}, dict(raw["default"]))


def _times(node: NodeWork, machine: Machine) -> tuple[float, float]:
    """(compute-bound, memory-bound) seconds; memory at the last-level cache's bandwidth when all the
    model's weights fit in it (run after run, they stay there), else at the memory's."""
    cached = 0 < node.model_weights <= machine.cache_bytes
    return (node.ops / machine.peak.get(node.dtype, machine.peak["fp32"]),
            node.bytes / (machine.cache_bandwidth if cached else machine.bandwidth))


def ideal_s(node: NodeWork, machine: Machine) -> float:
    return max(_times(node, machine))


def _bound(node: NodeWork, machine: Machine) -> str:
    compute, memory = _times(node, machine)
    return "compute" if compute >= memory else "memory"


EFFICIENCY_RANGE = (0.005, 2.0)
SIGNIFICANT = 2.0   # a node speaks of its kernel's speed when its ideal time is this many times its fixed cost


def _efficiencies(nodes: list[NodeWork], machine: Machine, overhead: float) -> dict[str, float]:
    lo, hi = EFFICIENCY_RANGE
    found = {}
    for bound in ("compute", "memory"):
        mine = [n for n in nodes if _bound(n, machine) == bound and ideal_s(n, machine) >= SIGNIFICANT * overhead]
        spent = sum(max(n.us * 1e-6 - overhead, 1e-8) for n in mine)
        if mine and spent > 0:
            found[bound] = min(max(sum(ideal_s(n, machine) for n in mine) / spent, lo), hi)
    return found


def _fit_line(nodes: list[NodeWork], machine: Machine) -> dict[str, float] | None:
    """A kind so far below its roofline that no node's ideal time passes its fixed cost (ConvInteger:
    ONNX Runtime's dynamic int8 convolutions, ~5% of the int8 peak) says nothing through
    `_efficiencies`, and a fixed cost alone (the median node's time) would make a 1-channel
    convolution cost what a 128-channel one does. Its time is still a line in its ideal time: fixed
    cost + ideal / efficiency, fitted on relative errors (the small nodes set the fixed cost, the large
    ones the slope) where the nodes' ideal times spread at least 1.5x. None where they do not."""
    ideal = np.array([ideal_s(n, machine) for n in nodes])
    taken = np.array([max(n.us, 1e-3) * 1e-6 for n in nodes])
    if len(nodes) < 2 or ideal.max() < 1.5 * ideal.min():
        return None
    slope, intercept = np.polyfit(ideal, taken, 1, w=1.0 / taken)
    if slope <= 0:
        return None
    bounds = [_bound(n, machine) for n in nodes]
    lo, hi = EFFICIENCY_RANGE
    return {"overhead": max(float(intercept), machine.node_overhead),
            max(("compute", "memory"), key=bounds.count): min(max(1.0 / float(slope), lo), hi)}


def fit_efficiency(nodes: list[NodeWork], machine: Machine) -> Efficiency:
    """Efficiency from measured nodes (their `us`, the profiler's cost taken off)."""
    kinds: dict[str, list[NodeWork]] = {}
    for node in nodes:
        kinds.setdefault(node.kind, []).append(node)
    by_kind = {}
    for kind, mine in kinds.items():
        overhead = max(min(n.us for n in mine) * 1e-6, machine.node_overhead)
        entry = {"overhead": overhead, **_efficiencies(mine, machine, overhead)}
        for _ in range(2):   # the fixed cost a node of the kind typically pays, not the least one paid
            fitted = Efficiency({kind: entry}, {"overhead": 0.0, "compute": 0.5, "memory": 1.0})
            rest = [max(n.us * 1e-6 - (node_s(n, machine, fitted) - entry["overhead"]), 0.0) for n in mine]
            entry = {"overhead": max(float(np.median(rest)), machine.node_overhead)}
            entry.update(_efficiencies(mine, machine, entry["overhead"]))
        if "compute" not in entry and "memory" not in entry:
            entry = _fit_line(mine, machine) or entry
        by_kind[kind] = entry
    default_overhead = machine.node_overhead   # a kind never seen: what a trivial node costs (tiny Adds)
    every = []   # each node less its own kind's fixed cost, for the defaults
    for node in nodes:
        every.append(replace(node, us=max(node.us - by_kind[node.kind]["overhead"] * 1e6 + default_overhead * 1e6, 0.0)))
    # A kind never seen memory-bound streams at the measured bandwidth (the roofline itself): what the
    # other kinds' memory-bound nodes managed (transposes, reorders: strided, small) says little of it.
    default = {"overhead": default_overhead, "compute": 0.5,
               **_efficiencies(every, machine, default_overhead), "memory": 1.0}
    return Efficiency(by_kind, default)


def node_s(node: NodeWork, machine: Machine, efficiency: Efficiency, clock_scale: float = 1.0) -> float:
    compute, memory = _times(node, machine)
    return efficiency.of(node.kind, "overhead") * clock_scale + max(
        compute / efficiency.of(node.kind, "compute"), memory / efficiency.of(node.kind, "memory"))


def estimate_s(nodes: list[NodeWork], machine: Machine, efficiency: Efficiency, clock_scale: float = 1.0) -> float:
    """Seconds for one run of a model made of `nodes` on `machine`; fixed costs measured on the host
    take `clock_scale` (the host's clock / the machine's) times as long."""
    return machine.run_overhead + sum(node_s(n, machine, efficiency, clock_scale) for n in nodes)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
