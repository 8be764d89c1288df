import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgewise.compression.sensitivity import Tolerance, guarded, layer_sensitivity, score_onnx
from edgewise.compression.quantize import weight_nodes
from edgewise.errors import EdgewiseError
from edgewise.measure.quality import BUILTIN_METRICS
from edgewise.runtime import onnx as onnx_runtime


def damaging_quantizer(damage: dict[str, float]):
    """A stand-in quantizer: adds noise of the given size to each quantized node's weights, so
    the guard's search can be checked exactly against known per-layer sensitivities."""
    def quantize(src, dst, exclude=(), include=None):
        model = onnx.load(str(src))
        weights = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.name in damage and node.name not in exclude and (include is None or node.name in include):
                init = weights[node.input[1]]
                array = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array(array + damage[node.name] * np.sign(array), init.name))
        onnx.save(model, str(dst))
        return dst
    return quantize


def test_tolerance_points_and_percent():
    accuracy = BUILTIN_METRICS["accuracy"]
    assert Tolerance.parse("0.5") == Tolerance(0.5) and Tolerance.parse("2%") == Tolerance(2.0, relative=True)
    assert Tolerance(1.0).drop(0.95, 0.94, accuracy) == pytest.approx(1.0)           # points
    assert Tolerance(1.0, relative=True).drop(0.5, 0.49, accuracy) == pytest.approx(2.0)  # percent
    assert Tolerance(0.02).drop(1.0, 0.99, BUILTIN_METRICS["cosine"]) == pytest.approx(0.01)
    with pytest.raises(EdgewiseError, match="give a number of points"):
        Tolerance.parse("lots")


def test_guard_keeps_exactly_the_sensitive_layer_in_float(tmp_path, encoder_task):
    src, _ = onnx_runtime.export_task(encoder_task, tmp_path / "fp32.onnx")
    nodes = weight_nodes(src)
    damage = {name: 0.001 for name in nodes} | {nodes[2]: 5.0}
    quantizer = damaging_quantizer(damage)
    baseline = score_onnx(encoder_task, src)
    tolerance = Tolerance(0.01)
    ranking = layer_sensitivity(encoder_task, src, quantizer, baseline, tolerance)
    assert ranking[0][0] == nodes[2] and ranking[0][1] > 10 * ranking[1][1]
    result = guarded(encoder_task, src, tmp_path / "out.onnx", quantizer, tolerance, baseline)
    assert result.met and result.kept_float == [nodes[2]] and result.drop <= 0.01
    assert score_onnx(encoder_task, result.path) == pytest.approx(result.value)


def test_unmeetable_tolerance_returns_best_and_names_the_layer(tmp_path, encoder_task):
    src, _ = onnx_runtime.export_task(encoder_task, tmp_path / "fp32.onnx")
    nodes = weight_nodes(src)
    quantizer = damaging_quantizer({name: 2.0 for name in nodes})
    result = guarded(encoder_task, src, tmp_path / "out.onnx", quantizer, Tolerance(0.0), score_onnx(encoder_task, src))
    assert not result.met and result.path.exists()
    assert "tolerance 0 point(s) not met" in result.message and result.sensitivity[0][0] in result.message
    assert len(result.kept_float) == len(nodes) - 1  # the best it found keeps all but one in float
