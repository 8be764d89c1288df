"""breast-cancer: an MLP on scikit-learn's Wisconsin breast-cancer data (569 x 30, medical)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

from edgewise.examples._cache import stratified_split, trained
from edgewise.task import Task


class Standardize(nn.Module):
    """Feature scaling inside the model, so the exported ONNX takes raw measurements."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def splits(seed: int = 0) -> tuple[tuple, tuple, tuple]:
    data = load_breast_cancer()
    features = data.data.astype(np.float32)
    return stratified_split(features, data.target, seed)


def load() -> Task:
    train, validation, test = splits()
    mean, std = train[0].mean(axis=0), train[0].std(axis=0) + 1e-6

    def build() -> nn.Module:
        return nn.Sequential(Standardize(mean, std), nn.Linear(30, 256), nn.ReLU(),
                             nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 2))

    torch.manual_seed(0)
    model = trained("breast-cancer-mlp-v3", build, train, epochs=60, lr=1e-3, weight_decay=1e-4)
    return Task(model, train=train, calibration=(train[0],), validation=validation, eval=test, metric="f1",
                name="breast-cancer")
