import json

import onnx
import pytest

from edgewise.compression.recipe import compress, parse_recipe, write_artifacts
from edgewise.compression.sensitivity import score_onnx
from edgewise.compression.steps import Bf16, Distill, Int8, Int8Dynamic, Prune, ort_has_bf16_matmul
from edgewise.errors import EdgewiseError


def test_grammar_builds_typed_steps():
    steps = parse_recipe("distill(depth=0.5, width=0.25) + prune(0.3,kind=2:4) + int8(method=entropy,max_drop=1%)")
    assert steps == [Distill(depth=0.5, width=0.25), Prune(0.3, kind="2:4"), Int8(method="entropy", max_drop="1%")]
    assert parse_recipe("int8-dynamic(per_tensor=true)") == [Int8Dynamic(per_tensor=True)]
    assert Prune(0.3, kind="2:4").label() == "prune(amount=0.3,kind=2:4)"


@pytest.mark.parametrize("recipe, message", [
    ("quantize", "unknown recipe step 'quantize': use one of distill, prune, int8, int8-dynamic, int4"),
    ("prune(0.5,ratio=2)", "prune: unknown option 'ratio'; valid options: amount, kind, importance"),
    ("prune(half)", "prune: amount='half' is not a float"),
    ("prune(0.5,kind=diagonal)", "prune: kind='diagonal' is not valid; kind must be structured, unstructured"),
    ("int8+prune(0.5)", "recipe order must be distill -> prune -> quantize"),
    ("int8+int4", "at most one quantization step"),
    ("int8(method=kl)", "int8: method='kl' is not valid; method must be minmax, percentile, entropy"),
    # checked when the recipe is read, before distill or prune trains anything
    ("distill(epochs=0)+int8", "distill: epochs=0 is not valid; epochs must be a whole number >= 1"),
    ("distill+prune(0.3)+int8(max_drop=abc)", "int8: max_drop='abc' is not valid"),
    ("distill(lr=nan)", "distill: lr=nan is not valid"),
    ("distill(depth=1.5)", "depth must be a fraction of the layers"),
    ("int4(group=48)", "int4: group=48 is not valid; group must be a power of two >= 16"),
    ("int8(samples=0)", "int8: samples=0 is not valid"),
    ("", "empty recipe"),
])
def test_bad_recipes_list_what_is_valid(recipe, message):
    from edgewise.compression.recipe import check_order
    with pytest.raises(EdgewiseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_order(parse_recipe(recipe))


def test_compress_measures_every_step_and_writes_artifacts(tmp_path, image_task):
    result = compress(image_task, [Prune(0.5, finetune_epochs=1), Int8()], workdir=tmp_path / "work")
    baseline, pruned, final = result.baseline, *result.steps
    assert [c.name for c in (baseline, pruned, final)] == ["baseline", "prune(amount=0.5,kind=structured,finetune_epochs=1)",
                                                         "prune(amount=0.5,kind=structured,finetune_epochs=1)+int8"]
    assert pruned.figures.params < 0.6 * baseline.figures.params
    assert final.figures.size_bytes < pruned.figures.size_bytes / 1.5  # int8 weights, plus QDQ scales
    assert pruned.figures.export_max_abs_error < 1e-4
    for candidate in (baseline, pruned, final):
        assert candidate.figures.metric.name == "accuracy" and candidate.figures.latency_ms.p50 > 0
        # stated on held-out samples, chosen on the others (the task has no validation split)
        choosing, stating = image_task.holdout()
        assert candidate.figures.metric.value == pytest.approx(score_onnx(stating, candidate.onnx()))
        assert candidate.validation_metric == pytest.approx(score_onnx(choosing, candidate.onnx()))
    out = write_artifacts(result, tmp_path / "out")
    card = json.loads((out / "card.json").read_text())
    assert card["recipe"] == final.name and card["final"]["params"] == final.figures.params
    assert card["final"]["validation_metric"] == final.validation_metric
    assert {"baseline", "steps", "machine"} <= set(card)
    assert "emulated Haswell" in card["accuracy_holds_for"] and "measured on" in card["accuracy_holds_for"]
    assert isinstance(card["machine"]["cpu_features"], list)
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}


def test_unstructured_prune_is_reported_as_size_only(tmp_path, image_task):
    result = compress(image_task, "prune(0.8,kind=unstructured,finetune_epochs=0)", workdir=tmp_path)
    baseline, sparse = result.baseline, result.final
    assert sparse.details["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert "no faster" in sparse.details["note"]
    assert sparse.figures.compressed_size_bytes < 0.5 * baseline.figures.compressed_size_bytes


def test_guarded_int8_keeps_the_layer_that_breaks_the_tolerance_in_float(tmp_path, image_task, monkeypatch):
    from edgewise.compression import quantize
    from edgewise.compression.quantize import weight_nodes
    from tests.compression.test_sensitivity import damaging_quantizer
    src = compress(image_task, [], workdir=tmp_path / "probe", measure=False).baseline.onnx()
    broken = weight_nodes(src)[1]   # quantizing this layer costs accuracy; the others cost nothing
    damage = damaging_quantizer({broken: 3.0})
    monkeypatch.setattr(quantize, "int8_static", lambda s, d, *args, exclude=(), include=None, **kw:
                        damage(s, d, exclude, include))
    result = compress(image_task, "int8(max_drop=0)", workdir=tmp_path / "work", measure=False)
    details = result.final.details
    assert details["kept_float"] == [broken] and details["tolerance_met"] and details["drop"] <= 0
    assert details["sensitivity"][0][0] == broken and details["sensitivity"][0][1] > 0


def test_onnx_model_cannot_be_pruned(tmp_path, image_task):
    from edgewise.runtime import onnx as onnx_runtime
    from edgewise.task import Task
    path, _ = onnx_runtime.export_task(image_task, tmp_path / "m.onnx")
    onnx_task = Task(path, calibration=image_task.calibration, eval=image_task.eval)
    with pytest.raises(EdgewiseError, match="prune works on a torch model"):
        compress(onnx_task, "prune(0.5)", workdir=tmp_path / "w", measure=False)


def test_bf16_is_refused_because_ort_cpu_has_no_bf16_matmul(tmp_path, image_task):
    if ort_has_bf16_matmul():
        pytest.skip("this ONNX Runtime has a bf16 MatMul on the CPU: the bf16 step should now be built, not refused")
    with pytest.raises(EdgewiseError, match="no bf16 MatMul kernel"):
        compress(image_task, [Bf16()], workdir=tmp_path, measure=False)
