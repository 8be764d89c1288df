"""Shared by the examples: a stratified split, and training once with the weights cached."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from safetensors.torch import load_file, save_file

from edgewise.files import atomic_path, cache_dir
from edgewise.train import fit


def stratified_split(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[tuple, tuple, tuple]:
    """60% train, 20% validation, 20% test, classes in the same proportions: three (x, y)."""
    labels = labels.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(features, labels, test_size=0.4, stratify=labels,
                                                        random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest,
                                                    random_state=seed)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


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
