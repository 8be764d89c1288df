import json

import numpy as np
import pytest

from edgewise.cli import main
from edgewise.compression.recipe import parse_recipe
from edgewise.compression.sensitivity import score_onnx
from edgewise.errors import EdgewiseError
from edgewise.load import load_task
from edgewise.targets import export


@pytest.fixture(scope="module")
def digits():
    return load_task("digits")


def _run_pte(path, inputs):
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path.read_bytes()).load_method("forward")
    import torch
    return np.concatenate([method.execute([torch.from_numpy(inputs[i:i + 1])])[0].numpy() for i in range(len(inputs))])


def test_fp32_round_trip_matches_torch_and_the_file_runs_alone(digits, tmp_path):
    [result] = export.ship(digits, digits.model, [], ["executorch"], tmp_path)
    assert result.passed and result.quantization == "fp32" and result.samples == export.CHECK_SAMPLES
    assert result.max_abs_diff < 1e-4 * max(1.0, result.max_abs_output)
    path = tmp_path / "model.pte"
    assert path.stat().st_size == result.bytes
    x = digits.sample_input(8)
    import torch
    with torch.no_grad():
        want = digits.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run_pte(path, x), want, atol=1e-4, rtol=1e-4)
    assert result.metric == pytest.approx(digits.evaluate(lambda i: _run_pte(path, i)), abs=1e-9)


def test_int8_export_through_compress_keeps_the_held_out_metric(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compress", "--example", "digits", "--recipe", "int8", "--out", str(out), "--export", "executorch",
                 "--seconds", "0.2"]) == 0
    assert "executorch: model.pte" in capsys.readouterr().out
    [entry] = json.loads((out / "card.json").read_text())["exports"]
    assert entry["passed"] and entry["quantization"] == "int8" and entry["file"] == "model.pte"
    assert entry["max_abs_diff"] <= entry["tolerance"] < 0.05 * entry["max_abs_output"]
    onnx_metric = score_onnx(load_task("digits").holdout()[1], out / "model.onnx")
    assert abs(entry["metric"] - onnx_metric) <= 0.02
    # int8 weights in both: the program is the size of the int8 ONNX file, a quarter of the fp32 weights
    assert (out / "model.pte").stat().st_size < 1.1 * (out / "model.onnx").stat().st_size
    fp32_bytes = 4 * sum(p.numel() for p in load_task("digits").model.parameters())
    assert (out / "model.pte").stat().st_size < 0.3 * fp32_bytes


def test_a_recipe_executorch_cannot_take_is_refused_and_nothing_written(digits, tmp_path):
    [result] = export.ship(digits, digits.model, parse_recipe("int4"), ["executorch"], tmp_path)
    assert not result.passed and "covers fp32, int8 and int8-dynamic" in result.message
    [onnx_only] = export.ship(digits, None, [], ["executorch"], tmp_path)
    assert not onnx_only.passed and "ONNX file" in onnx_only.message
    assert list(tmp_path.iterdir()) == []


def test_missing_executorch_says_how_to_install(monkeypatch):
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EdgewiseError, match=r"pip install 'edgewise\[executorch\]'"):
        export.check_format("executorch")
