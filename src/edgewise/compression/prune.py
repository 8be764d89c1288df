"""Pruning in torch: structured (channels, neurons, heads really removed) and unstructured.

Structured pruning uses torch-pruning's dependency graph, so coupled layers across residual
connections, concatenations and normalisation layers shrink together. Unstructured and 2:4
sparsity only zero weights: that saves size in a compressed artifact, not dense latency.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from edgewise.data import Inputs
from edgewise.errors import EdgewiseError
from edgewise.runtime.torch import as_torch_call, count_params, first_tensor

Finetune = Callable[[nn.Module], None]
GradientFn = Callable[[nn.Module], None]  # accumulates .grad on the model's weights (Taylor)


def _example(inputs: Inputs) -> Any:
    args, kwargs = as_torch_call(inputs)
    return kwargs if kwargs else (args[0] if len(args) == 1 else args)


def _output_shape(model: nn.Module, inputs: Inputs) -> tuple[int, ...]:
    args, kwargs = as_torch_call(inputs)
    with torch.no_grad():
        return tuple(first_tensor(model.eval()(*args, **kwargs)).shape)


def _frozen_layers(model: nn.Module, inputs: Inputs, transformer: dict | None) -> list[nn.Module]:
    """Layers whose output width must not change: the one that produces the model's output and,
    for transformers, the embeddings and every layer writing into the residual stream."""
    if transformer:
        return [m for name, m in model.named_modules()
                if name.endswith(("embeddings", "attention.output.dense", ".output.dense", "pooler"))]
    executed: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: executed.append(mod))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    try:
        _output_shape(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return executed[-1:]


def _attention_heads(model: nn.Module, transformer: dict | None) -> dict[nn.Module, int]:
    if not transformer:
        return {}
    heads = {}
    for module in model.modules():
        if all(hasattr(module, name) for name in ("query", "key", "value")):
            for linear in (module.query, module.key, module.value):
                heads[linear] = linear.out_features // (transformer["hidden_size"] // transformer["num_heads"])
    return heads


def _sync_attention_shapes(model: nn.Module, pruner: Any, transformer: dict | None) -> None:
    """After heads are removed, tell HF attention modules how many remain."""
    if not transformer:
        return
    for module in model.modules():
        if all(hasattr(module, name) for name in ("query", "key", "value")) and module.query in pruner.num_heads:
            module.num_attention_heads = pruner.num_heads[module.query]
            module.all_head_size = module.query.out_features
            module.attention_head_size = module.all_head_size // max(1, module.num_attention_heads)


def _pruner(model: nn.Module, inputs: Inputs, channel_ratio: float, steps: int, importance: str,
            transformer: dict | None) -> Any:
    heads = _attention_heads(model, transformer)
    scorer = tp.importance.TaylorImportance() if importance == "taylor" else tp.importance.MagnitudeImportance(p=2)
    return tp.pruner.MetaPruner(
        model, _example(inputs), importance=scorer, pruning_ratio=channel_ratio, iterative_steps=steps,
        ignored_layers=_frozen_layers(model, inputs, transformer), num_heads=heads,
        prune_num_heads=bool(heads), prune_head_dims=False, head_pruning_ratio=channel_ratio if heads else 0.0,
        round_to=8)


def _channel_ratio_for(model: nn.Module, inputs: Inputs, amount: float, transformer: dict | None) -> float:
    """The channel ratio that removes `amount` of the parameters, found by bisection on copies."""
    total = count_params(model)
    low, high = 0.0, 0.95
    for _ in range(8):
        middle = (low + high) / 2
        trial = copy.deepcopy(model)
        _pruner(trial, inputs, middle, 1, "magnitude", transformer).step()
        removed = 1 - count_params(trial) / total
        low, high = (middle, high) if removed < amount else (low, middle)
    return high


def structured(model: nn.Module, inputs: Inputs, amount: float, *, importance: str = "magnitude",
               steps: int = 3, finetune: Finetune | None = None, gradients: GradientFn | None = None,
               transformer: dict | None = None) -> nn.Module:
    """A copy of `model` with about `amount` of its parameters removed as whole channels/heads.

    Pruning is gradual: `steps` rounds, each followed by `finetune` when given. Taylor
    importance needs `gradients`, which accumulates the task loss's gradients on the weights.
    """
    if not 0 < amount < 1:
        raise EdgewiseError(f"prune amount must be between 0 and 1 (a fraction of parameters), got {amount}")
    if importance not in ("magnitude", "taylor"):
        raise EdgewiseError(f"importance {importance!r}: use magnitude or taylor")
    if importance == "taylor" and gradients is None:
        raise EdgewiseError("taylor importance needs the train split: give Task(train=(X, y))")
    model = copy.deepcopy(model).eval()
    shape = _output_shape(model, inputs)
    ratio = _channel_ratio_for(model, inputs, amount, transformer)
    pruner = _pruner(model, inputs, ratio, steps, importance, transformer)
    for _ in range(steps):
        if importance == "taylor":
            model.zero_grad()
            gradients(model)
        pruner.step()
        _sync_attention_shapes(model, pruner, transformer)
        if finetune:
            finetune(model)
    if _output_shape(model, inputs) != shape:
        raise RuntimeError(f"structured pruning changed the output shape {shape} -> {_output_shape(model, inputs)}")
    return model.eval()


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]


def _two_of_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest of every 4 consecutive input weights: [out, in, ...] -> same-shape 0/1 mask."""
    flat = weight.detach().reshape(weight.shape[0], -1)                   # [out, in * k]
    groups = flat.abs().reshape(flat.shape[0], -1, 4)                     # [out, groups, 4]
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups).scatter_(-1, keep, 1.0)
    return mask.reshape(weight.shape)


def unstructured(model: nn.Module, amount: float, *, kind: str = "global",
                 finetune: Finetune | None = None) -> tuple[nn.Module, dict]:
    """A copy of `model` with weights zeroed: the smallest `amount` (global or per layer), or 2:4.

    Returns the model and a report: sparsity reached and the layers left dense. Zeros make the
    artifact compress well; dense kernels run no faster.
    """
    model = copy.deepcopy(model)
    layers = _prunable(model)
    skipped = []
    if kind == "2:4":
        kept = []
        for module, name in layers:
            if getattr(module, name)[0].numel() % 4:
                skipped.append(type(module).__name__)
                continue
            torch_prune.custom_from_mask(module, name, _two_of_four_mask(getattr(module, name)))
            kept.append((module, name))
        layers = kept
    elif kind == "global":
        torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured, amount=amount)
    elif kind == "layer":
        for module, name in layers:
            torch_prune.l1_unstructured(module, name, amount=amount)
    else:
        raise EdgewiseError(f"unstructured kind {kind!r}: use global, layer or 2:4")
    if finetune:
        finetune(model)  # the masks keep pruned weights at zero while the rest adapt
    for module, name in layers:
        torch_prune.remove(module, name)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in _prunable(model))
    total = sum(getattr(m, n).numel() for m, n in _prunable(model))
    return model.eval(), {"sparsity": zeros / max(1, total), "dense_layers": skipped}
