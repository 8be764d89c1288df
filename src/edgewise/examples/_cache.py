"""Train an example model once and keep its weights in the cache folder (safetensors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from edgewise.files import atomic_path, cache_dir
from edgewise.train import fit


def trained(key: str, build: Callable[[], torch.nn.Module], train: Any, **fit_options: Any) -> torch.nn.Module:
    """`build()` with weights trained on `train`, from the cache when already trained."""
    path = cache_dir() / "examples" / f"{key}.safetensors"
    model = build()
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a stale or damaged cache entry: train again and replace it
            model = build()
    fit(model, train, description=f"training example {key}", **fit_options)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return model.eval()
