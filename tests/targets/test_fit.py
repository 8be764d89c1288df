import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgewise.compression.quantize import int8_static
from edgewise.errors import EdgewiseError
from edgewise.runtime.onnx import export
from edgewise.targets.fit import fit
from edgewise.targets.graph import analyse
from edgewise.targets.profiles import load


def _save(model: onnx.ModelProto, path) -> str:
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_the_liveness_plan_keeps_a_tensor_until_its_last_reader(tmp_path):
    # x -> a = relu(x) -> b = relu(a) -> c = a + b: a lives until the Add, so the peak is a, b and c at once
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["c"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1000])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", 1000])])
    g = analyse(_save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx"))
    assert g.tensors["a"].shape == (1, 1000)   # a free batch dimension is 1
    assert g.live_peak() == (3 * 4000, 2)


def test_weights_count_at_their_dtypes(tmp_path):
    w = numpy_helper.from_array(np.ones((100, 10), np.int8), "w")
    s = numpy_helper.from_array(np.ones(10, np.float32), "s")
    nodes = [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["wf", "s"], ["ws"]),
             helper.make_node("MatMul", ["x", "ws"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 100])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, s])
    g = analyse(_save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx"))
    assert g.file_weights_bytes == 1000 + 40


@pytest.fixture(scope="module")
def small_int8(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10)).eval()
    folder = tmp_path_factory.mktemp("small")
    export(model, np.zeros((1, 1, 8, 8), np.float32), folder / "fp32.onnx")
    calibration = (np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32),)
    return int8_static(folder / "fp32.onnx", folder / "model.onnx", calibration, samples=16)


def test_a_small_int8_model_fits_the_microcontroller_with_headroom(small_int8):
    result = fit(small_int8.parent, load("stm32h743"))
    assert result.fits and not result.problems
    flash = next(r for r in result.regions if r.memory == "flash")
    weights = result.figures["weights_bytes"]
    assert 0 < small_int8.stat().st_size - weights < 4096   # the file is the weights and a graph of a few KB
    assert flash.used == weights + 102400 and flash.headroom == 2 * 1024 * 1024 - flash.used
    # read in place from flash: the weights take no RAM; the arena holds int8 activations
    ram = [p.what for r in result.regions if r.memory == "ram" for p in r.pieces]
    assert "weights" not in ram and "activations arena" in ram
    assert result.figures["activations_peak_bytes"] < 16 * 64 * 4


def test_what_does_not_fit_names_the_region_and_by_how_much(tmp_path):
    # 8 x 128 x 128 floats in and 8 x 128 x 128 out: 1 MiB of activations at once, more than the largest
    # 512 KB block although the microcontroller has more RAM than that in all
    conv = nn.Conv2d(8, 8, 3, padding=1).eval()
    export(conv, np.zeros((1, 8, 128, 128), np.float32), tmp_path / "model.onnx")
    result = fit(tmp_path / "model.onnx", load("stm32h743"))
    assert not result.fits
    [problem] = result.problems
    assert problem.startswith("ram: the activations arena needs 1.05 MB in one block") and "AXI SRAM" in problem
    assert "short" in problem and fit(tmp_path / "model.onnx", load("raspberry-pi-5")).fits
    # what the model needs still counts: the arena that found no block, beside what was placed
    assert [(m, p.what) for m, p in result.unplaced] == [("ram", "activations arena")]
    arena = result.figures["activations_peak_bytes"]
    assert result.used("ram") == arena + 16384 and result.to_json()["ram_bytes"] == arena + 16384


def test_an_rwkv_file_counts_its_weights_and_its_state(tmp_path):
    from edgewise.rwkv.synthetic import random_checkpoint

    path = random_checkpoint(tmp_path / "tiny.pth", layers=2, width=128, vocab=300)
    result = fit(path, load("raspberry-pi-5"))
    assert result.fits and result.figures["kind"] == "rwkv"
    assert result.figures["state_bytes"] == 2 * (2 * 128 + 2 * 64 * 64) * 4   # L x (2C + H N^2) floats


def test_a_missing_or_broken_model_is_a_clear_error(tmp_path):
    with pytest.raises(EdgewiseError, match="no such file or folder"):
        fit(tmp_path / "nope.onnx", load("stm32h743"))
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(EdgewiseError, match="not an ONNX model"):
        fit(tmp_path / "bad.onnx", load("stm32h743"))
