"""digits: a small CNN on scikit-learn's 8x8 handwritten digits (1797 images, 10 classes)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from edgewise.examples._cache import stratified_split, trained
from edgewise.task import Task


def build() -> nn.Module:
    """Conv 1->64->128->256 with batch norm, then a 1024->256->10 head: ~0.7M parameters."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 64), *block(64, 128), nn.MaxPool2d(2),   # [B, 128, 4, 4]
        *block(128, 256), nn.MaxPool2d(2),                 # [B, 256, 2, 2]
        nn.Flatten(), nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10),
    )


def splits(seed: int = 0) -> tuple[tuple, tuple, tuple]:
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    return stratified_split(images, data.target, seed)


def load() -> Task:
    train, validation, test = splits()
    torch.manual_seed(0)
    model = trained("digits-cnn-v2", build, train, epochs=15, lr=2e-3, weight_decay=1e-4)
    return Task(model, train=train, calibration=(train[0][:300],), validation=validation, eval=test,
                metric="accuracy", name="digits")
