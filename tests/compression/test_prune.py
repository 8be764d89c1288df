import pytest
import torch

from edgewise.compression import prune
from edgewise.errors import EdgewiseError
from edgewise.runtime import onnx as onnx_runtime
from edgewise.runtime.torch import count_params, predict
from tests.conftest import TinyResNet


def test_structured_pruning_crosses_residual_connections(tmp_path, image_task):
    inputs = image_task.sample_input(4)
    pruned = prune.structured(image_task.model, inputs, 0.5)
    assert count_params(pruned) <= 0.55 * count_params(image_task.model)
    widths = {m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)}
    assert max(widths) < 32  # channels really removed, skip connections shrunk with them
    assert predict(pruned, inputs).shape == (4, 2)
    path = onnx_runtime.export(pruned, inputs, tmp_path / "pruned.onnx")
    assert onnx_runtime.max_abs_error(pruned, onnx_runtime.session(path), inputs) < 1e-4
    assert count_params(image_task.model) == count_params(TinyResNet(classes=2))  # original untouched


def test_finetuning_runs_after_every_gradual_step(image_task):
    rounds = []
    prune.structured(image_task.model, image_task.sample_input(2), 0.4, steps=3, finetune=rounds.append)
    assert len(rounds) == 3


def test_taylor_importance_uses_gradients(image_task):
    calls = []

    def gradients(model):
        calls.append(1)
        x = torch.from_numpy(image_task.train[0][:32])
        torch.nn.functional.cross_entropy(model(x), torch.from_numpy(image_task.train[1][:32])).backward()

    pruned = prune.structured(image_task.model, image_task.sample_input(2), 0.5, importance="taylor",
                              steps=2, gradients=gradients)
    assert len(calls) == 2 and count_params(pruned) < 0.6 * count_params(image_task.model)
    with pytest.raises(EdgewiseError, match="taylor importance needs the train split"):
        prune.structured(image_task.model, image_task.sample_input(2), 0.5, importance="taylor")


def test_unstructured_global_and_per_layer_reach_the_sparsity(image_task):
    for kind in ("global", "layer"):
        model, report = prune.unstructured(image_task.model, 0.6, kind=kind)
        assert report["sparsity"] == pytest.approx(0.6, abs=0.01)
        assert count_params(model) == count_params(image_task.model)  # same shapes: size-only


def test_two_of_four_zeroes_two_in_every_group_and_names_skipped_layers(image_task):
    model, report = prune.unstructured(image_task.model, 0.5, kind="2:4")
    conv = model.blocks[0][0].weight.detach().reshape(32, -1)      # [32, 288]: groups of 4 along inputs
    zeros_per_group = (conv.reshape(32, -1, 4) == 0).sum(-1)
    assert (zeros_per_group == 2).all()
    assert report["dense_layers"] == ["Conv2d"]  # the stem has 9 inputs per output: not a multiple of 4


def test_bad_amounts_are_refused(image_task):
    with pytest.raises(EdgewiseError, match="between 0 and 1"):
        prune.structured(image_task.model, image_task.sample_input(2), 1.5)
    with pytest.raises(EdgewiseError, match="unstructured kind 'blocks'"):
        prune.unstructured(image_task.model, 0.5, kind="blocks")
