"""One training loop for every place edgewise trains: examples, fine-tuning, distillation."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgewise.data import iter_batches
from edgewise.progress import progress_bar
from edgewise.runtime.torch import as_torch_call, first_tensor

LossFn = Callable[[torch.nn.Module, Any, torch.Tensor | None], torch.Tensor]


@dataclass
class FitResult:
    epochs_run: int
    best_score: float | None
    stopped_early: bool


def classification_loss(model: torch.nn.Module, inputs: Any, labels: torch.Tensor | None) -> torch.Tensor:
    args, kwargs = as_torch_call(inputs)
    logits = first_tensor(model(*args, **kwargs))
    return torch.nn.functional.cross_entropy(logits, labels.long())


def output_distance(output: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean (1 - cosine) or MSE between rows of `output` and `target`."""
    if kind == "mse":
        return torch.nn.functional.mse_loss(output, target)
    return (1 - torch.nn.functional.cosine_similarity(output, target, dim=-1)).mean()


def fidelity_loss(teacher: torch.nn.Module, kind: str = "cosine") -> LossFn:
    """Loss that pulls a model's outputs towards `teacher`'s on the same inputs (no labels needed)."""
    teacher.eval()

    def loss(model: torch.nn.Module, inputs: Any, labels: torch.Tensor | None) -> torch.Tensor:
        args, kwargs = as_torch_call(inputs)
        with torch.no_grad():
            target = first_tensor(teacher(*args, **kwargs))
        return output_distance(first_tensor(model(*args, **kwargs)), target, kind)
    return loss


def shuffled(split: Any, seed: int) -> Any:
    """An array split with its samples in a new random order; a list of batches with its batches
    in a new order (other iterables pass unchanged)."""
    from edgewise.data import is_array_split, num_samples, take
    if isinstance(split, list):
        return [split[i] for i in np.random.default_rng(seed).permutation(len(split))]
    if not is_array_split(split):
        return split
    order = np.random.default_rng(seed).permutation(num_samples(split[0]))
    labels = split[1][order] if len(split) == 2 and split[1] is not None else None
    return (take(split[0], order), labels) if labels is not None else (take(split[0], order),)


def fit(model: torch.nn.Module, train: Any, *, loss_fn: LossFn = classification_loss, epochs: int = 10,
        lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0,
        score_fn: Callable[[torch.nn.Module], float] | None = None, patience: int = 3,
        max_steps: int | None = None, description: str = "training", show_progress: bool = True) -> FitResult:
    """Train `model` in place with AdamW and a cosine schedule.

    With `score_fn` (higher is better) it is evaluated after each epoch, training stops when it
    has not improved for `patience` epochs, and the best weights are restored. With `max_steps`,
    training ends after that many optimizer steps if the epochs have not ended it first (the
    schedule spans whichever is shorter; the last, partial epoch is scored too).
    """
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, sum(1 for _ in iter_batches(train, batch_size, where="train")))
    total_steps = epochs * steps_per_epoch if max_steps is None else min(epochs * steps_per_epoch, max_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    best_score, best_state, stale, epoch = None, None, 0, 0
    with progress_bar(disable=not show_progress) as progress:
        bar = progress.add_task(description, total=total_steps, status="")
        step = 0
        for epoch in range(1, epochs + 1):
            model.train()
            for inputs, labels in iter_batches(shuffled(train, seed + epoch), batch_size, where="train"):
                if step == total_steps:
                    break
                step += 1
                target = torch.from_numpy(labels) if labels is not None else None
                loss = loss_fn(model, inputs, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                progress.update(bar, advance=1, status=f"loss {loss.item():.4f}")
            if score_fn is not None:
                model.eval()
                score = score_fn(model)
                if best_score is None or score > best_score:
                    best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
                else:
                    stale += 1
                progress.update(bar, status=f"epoch {epoch} score {score:.4f} best {best_score:.4f}")
            if stale >= patience or step == total_steps:
                break
    model.eval()
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(epochs_run=epoch, best_score=best_score, stopped_early=epoch < epochs)
