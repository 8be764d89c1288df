import numpy as np
import onnx
import pytest

from edgewise.errors import EdgewiseError
from edgewise.runtime import onnx as onnx_runtime
from tests.conftest import TwoInputs, tiny_classifier


def test_export_matches_torch_and_accepts_any_batch(tmp_path):
    model = tiny_classifier()
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    path = onnx_runtime.export(model, x[:2], tmp_path / "m.onnx")
    sess = onnx_runtime.session(path, threads=1)
    assert onnx_runtime.predict(sess, x).shape == (5, 3)
    assert onnx_runtime.max_abs_error(model, sess, x) < 1e-5
    assert onnx.load(str(path)).opset_import[0].version >= 17
    assert not list(tmp_path.glob("*.part")), "no temporary file left behind"


def test_named_inputs_export_with_dynamic_sequence(tmp_path):
    model = TwoInputs().eval()
    rng = np.random.default_rng(0)
    inputs = {"input_ids": rng.integers(0, 50, (3, 9)), "attention_mask": np.ones((3, 9), np.int64)}
    sess = onnx_runtime.session(onnx_runtime.export(model, inputs, tmp_path / "two.onnx"))
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    longer = {"input_ids": rng.integers(0, 50, (2, 20)), "attention_mask": np.ones((2, 20), np.int64)}
    assert onnx_runtime.max_abs_error(model, sess, longer) < 1e-5


def test_feed_names_missing_inputs(tmp_path):
    inputs = {"input_ids": np.zeros((1, 4), np.int64), "attention_mask": np.ones((1, 4), np.int64)}
    sess = onnx_runtime.session(onnx_runtime.export(TwoInputs().eval(), inputs, tmp_path / "two.onnx"))
    with pytest.raises(EdgewiseError, match="lack \\['attention_mask'\\]"):
        onnx_runtime.feed(sess, {"input_ids": inputs["input_ids"]})
    with pytest.raises(EdgewiseError, match="takes 2 inputs"):
        onnx_runtime.feed(sess, inputs["input_ids"])


def test_size_and_params_are_counted_from_the_file(tmp_path):
    model = tiny_classifier()
    path = onnx_runtime.export(model, np.zeros((1, 6), np.float32), tmp_path / "m.onnx")
    assert onnx_runtime.count_params(path) == sum(p.numel() for p in model.parameters())
    assert onnx_runtime.size_bytes(path) == path.stat().st_size


def test_missing_truncated_and_garbage_files_are_user_errors(tmp_path):
    good = onnx_runtime.export(tiny_classifier(), np.zeros((1, 6), np.float32), tmp_path / "m.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a model" * 10)
    with pytest.raises(EdgewiseError, match="no such file"):
        onnx_runtime.load_model(tmp_path / "absent.onnx")
    for bad in (truncated, garbage):
        with pytest.raises(EdgewiseError, match="not a valid ONNX model"):
            onnx_runtime.session(bad)


def test_unexportable_model_names_the_model(tmp_path):
    import torch

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x[x > 0].sum().reshape(1).item()  # a Python float: cannot be traced

    with pytest.raises(EdgewiseError, match="could not export DataDependent"):
        onnx_runtime.export(DataDependent(), np.ones((1, 3), np.float32), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
