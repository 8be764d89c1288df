import pytest

from edgewise.targets.estimate import Efficiency, Machine, NodeWork, estimate_s, fit_efficiency, node_work, spearman

HOST = Machine({"fp32": 100e9, "int8": 200e9}, 20e9, 1e-6, 5e-6)


def test_a_convolution_counts_its_pre_packed_weights_from_the_graph():
    # the profiler lists the input, scales and bias of a QLinearConv, not the weight ONNX Runtime packed
    node = node_work("c", "QLinearConv", [{"uint8": [1, 8, 8, 3]}, {"float": []}, {"int32": [16]}],
                     [{"uint8": [1, 8, 8, 16]}], weights=[("int8", [16, 3, 3, 3]), ("int32", [16])])
    assert node.ops == 2 * (8 * 8 * 16) * (3 * 3 * 3) and node.dtype == "int8" and node.kind == "conv/int8"
    assert node.bytes == 8 * 8 * 3 + 4 + 16 * 4 + 8 * 8 * 16 + 16 * 3 * 3 * 3   # a scalar is one value; the bias once
    depthwise = node_work("d", "Conv", [{"float": [1, 32, 8, 8]}], [{"float": [1, 32, 8, 8]}],
                          weights=[("float", [32, 1, 3, 3])])
    assert depthwise.kind == "dwconv/fp32" and depthwise.ops == 2 * 32 * 64 * 9
    # the same filters on a one-channel input are a plain convolution (one GEMM), in either layout
    for x, y in (([1, 1, 8, 8], [1, 32, 8, 8]), ([1, 8, 8, 1], [1, 8, 8, 32])):
        first = node_work("f", "ConvInteger", [{"uint8": x}], [{"int32": y}], weights=[("int8", [32, 1, 3, 3])])
        assert first.kind == "ConvInteger/int8"
    nhwc = node_work("q", "QLinearConv", [{"uint8": [1, 8, 8, 32]}], [{"uint8": [1, 8, 8, 32]}],
                     weights=[("int8", [32, 1, 3, 3])])
    assert nhwc.kind == "dwconv/int8"


def test_a_matmul_reduces_over_its_first_inputs_last_dimension():
    node = node_work("m", "MatMul", [{"float": [4, 32, 64]}, {"float": [4, 64, 32]}], [{"float": [4, 32, 32]}])
    assert node.ops == 2 * 4 * 32 * 32 * 64 and node.kind == "matmul/fp32"
    vector = node_work("v", "Gemm", [{"float": [1, 256]}], [{"float": [1, 64]}], weights=[("float", [64, 256])])
    assert vector.kind == "gemv/fp32" and vector.ops == 2 * 64 * 256   # matrix-vector: a kernel of its own
    fitted = Efficiency({"matmul/fp32": {"compute": 0.8}}, {"overhead": 0.0, "compute": 0.1, "memory": 1.0})
    assert fitted.of("gemv/fp32", "compute") == 0.8   # unseen, it borrows the matrix product's


def _nodes(kind_op: str, efficiency: float, overhead: float, sizes) -> list[NodeWork]:
    # compute-bound nodes that took overhead + ideal / efficiency
    return [NodeWork(f"n{i}", kind_op, ops, 1.0, "fp32", (overhead + ops / HOST.peak["fp32"] / efficiency) * 1e6)
            for i, ops in enumerate(sizes)]


def test_fitting_recovers_a_kinds_fixed_cost_and_efficiency():
    nodes = _nodes("Conv", 0.4, 3e-6, [1e3, 1e6, 1e7, 1e8])   # the smallest is all fixed cost
    fitted = fit_efficiency(nodes, HOST)
    assert fitted.of("conv/fp32", "overhead") == pytest.approx(3e-6, rel=0.01)
    assert fitted.of("conv/fp32", "compute") == pytest.approx(0.4, rel=0.02)
    assert fitted.of("dwconv/fp32", "compute") == fitted.of("conv/fp32", "compute")   # a relative's, not seen itself
    assert fitted.of("Softmax/fp32", "memory") == 1.0 and fitted.of("Softmax/fp32", "overhead") == HOST.node_overhead
    seconds = estimate_s(nodes, HOST, fitted)
    assert seconds == pytest.approx(HOST.run_overhead + sum(n.us for n in nodes) * 1e-6, rel=0.02)


def test_a_kind_far_below_its_roofline_still_scales_with_its_work():
    # ConvInteger-like: 1% of the peak, so every node's ideal time is below the fixed cost's threshold;
    # a fixed cost alone (the median node's) would give a small node the large ones' time
    nodes = _nodes("ConvInteger", 0.01, 15e-6, [2e4, 2e5, 8e5, 8e5])
    fitted = fit_efficiency(nodes, HOST)
    assert fitted.of(nodes[0].kind, "compute") == pytest.approx(0.01, rel=0.02)
    assert fitted.of(nodes[0].kind, "overhead") == pytest.approx(15e-6, rel=0.05)
    for node in nodes:
        assert estimate_s([node], HOST, fitted) - HOST.run_overhead == pytest.approx(node.us * 1e-6, rel=0.03)


def test_a_slower_target_takes_longer_in_proportion():
    fitted = Efficiency({"conv/fp32": {"overhead": 0.0, "compute": 0.5}}, {"overhead": 0.0, "compute": 0.5, "memory": 1.0})
    nodes = _nodes("Conv", 0.5, 0.0, [1e9])
    slow = Machine({"fp32": 10e9, "int8": 20e9}, 2e9, 0.0, 0.0)
    assert estimate_s(nodes, slow, fitted) == pytest.approx(10 * (estimate_s(nodes, HOST, fitted) - HOST.run_overhead))


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 1, 2]) == pytest.approx(0.866, abs=1e-3)
