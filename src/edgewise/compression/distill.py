"""Distillation in torch: a smaller student trained to mimic its teacher.

Logit KD (temperature, mixed with hard labels) where the task has labels; output/embedding
matching (cosine or MSE) where it has none, as for sentence encoders. A student is given, or
derived from the teacher by depth (a subset of its repeated blocks, initialised from them).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from edgewise.errors import EdgewiseError
from edgewise.data import is_array_split, iter_batches
from edgewise.runtime.torch import as_torch_call, first_tensor, predict
from edgewise.train import LossFn, fidelity_loss, output_distance


def _block_stack(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The longest ModuleList of same-type blocks (a transformer's layers), with its path."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2 and len({type(b) for b in module}) == 1:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    return best


def shallower(teacher: nn.Module, depth: float) -> nn.Module:
    """A copy of `teacher` keeping `depth` of its repeated blocks, evenly spaced, with their weights.

    The last block is always kept (it shapes the output); e.g. 6 BERT layers at 0.5 keep 1, 3, 5.
    """
    if not 0 < depth < 1:
        raise EdgewiseError(f"distill depth must be between 0 and 1 (a fraction of layers), got {depth}")
    found = _block_stack(teacher)
    if found is None:
        raise EdgewiseError(f"distill(depth=...): {type(teacher).__name__} has no stack of repeated layers "
                            "to shorten; use distill(width=...) or give a student model")
    path, blocks = found
    keep = max(1, round(len(blocks) * depth))
    indices = sorted({round(len(blocks) - 1 - i * len(blocks) / keep) for i in range(keep)})
    student = copy.deepcopy(teacher)
    stack = student.get_submodule(path)
    kept = nn.ModuleList([stack[i] for i in indices])
    parent_path, _, attr = path.rpartition(".")
    setattr(student.get_submodule(parent_path) if parent_path else student, attr, kept)
    for config in _configs(student):
        config.num_hidden_layers = len(kept)
    return student


def _configs(model: nn.Module) -> list[Any]:
    return [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "num_hidden_layers")]


def kd_loss(teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5) -> LossFn:
    """alpha x cross-entropy on hard labels + (1 - alpha) x T^2 x KL(teacher_T || student_T)."""
    teacher.eval()

    def loss(model: nn.Module, inputs: Any, labels: torch.Tensor | None) -> torch.Tensor:
        args, kwargs = as_torch_call(inputs)
        with torch.no_grad():
            target = first_tensor(teacher(*args, **kwargs))
        logits = first_tensor(model(*args, **kwargs))
        soft = nn.functional.kl_div(nn.functional.log_softmax(logits / temperature, dim=-1),
                                    nn.functional.log_softmax(target / temperature, dim=-1),
                                    log_target=True, reduction="batchmean") * temperature**2
        if labels is None:
            return soft
        return alpha * nn.functional.cross_entropy(logits, labels.long()) + (1 - alpha) * soft
    return loss


def with_teacher_outputs(teacher: nn.Module, split: Any, batch_size: int = 64) -> Any:
    """`(X, teacher(X))` for an array split, or those batches for a list of batches: the teacher
    runs once, not once per epoch. None for other iterables (they may not repeat)."""
    if is_array_split(split):
        return (split[0], predict(teacher, split[0], batch_size=batch_size))
    if isinstance(split, list):
        return [(inputs, predict(teacher, inputs, batch_size=batch_size)) for inputs, _ in iter_batches(split)]
    return None


def frozen_embeddings(model: nn.Module) -> list[nn.Parameter]:
    """Stop training the model's embedding tables; returns what was frozen, to thaw after training.

    A student derived from its teacher keeps the teacher's token embeddings: training them on a
    little text moves only the tokens that text contains, and costs half of each step on
    MiniLM (a dense gradient and an Adam update over its 11.7M embedding weights).
    """
    frozen = [p for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    return frozen


def matching_loss(kind: str = "cosine") -> LossFn:
    """Output matching against targets passed as the batch's labels (see with_teacher_outputs)."""
    def loss(model: nn.Module, inputs: Any, targets: torch.Tensor | None) -> torch.Tensor:
        args, kwargs = as_torch_call(inputs)
        return output_distance(first_tensor(model(*args, **kwargs)), targets, kind)
    return loss


def distill_loss(teacher: nn.Module, has_labels: bool, match: str = "auto", temperature: float = 2.0,
                 alpha: float = 0.5) -> LossFn:
    """Logit KD for labelled tasks, output matching (cosine/MSE) otherwise; `match` forces one."""
    if match == "auto":
        match = "kd" if has_labels else "cosine"
    if match == "kd":
        return kd_loss(teacher, temperature, alpha)
    if match in ("cosine", "mse"):
        return fidelity_loss(teacher, match)
    raise EdgewiseError(f"distill match {match!r}: use kd, cosine or mse")
