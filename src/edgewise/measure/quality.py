"""Task metrics: higher is better for every one of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score

from edgewise.errors import EdgewiseError


@dataclass(frozen=True)
class Metric:
    """A task metric over whole-split outputs.

    `fn(outputs, targets)` returns a float where higher is better. `needs_reference` metrics
    compare against the original model's outputs (fidelity) instead of labels.
    """

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    needs_reference: bool = False
    scale: float = 1.0  # accuracy-like metrics are reported in points (x100) for drops


@dataclass(frozen=True)
class MetricValue:
    """A measured metric: its name and value."""

    name: str
    value: float


def _accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(_predicted_classes(outputs) == labels.reshape(-1)))


def _f1(outputs: np.ndarray, labels: np.ndarray) -> float:
    labels = labels.reshape(-1)
    average = "binary" if len(np.unique(labels)) <= 2 and outputs.shape[-1] <= 2 else "macro"
    return float(f1_score(labels, _predicted_classes(outputs), average=average, zero_division=0))


def _predicted_classes(outputs: np.ndarray) -> np.ndarray:
    outputs = outputs.reshape(len(outputs), -1)
    if outputs.shape[1] == 1:  # a single logit: binary classification
        return (outputs[:, 0] > 0).astype(np.int64)
    return outputs.argmax(axis=1)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def _cosine(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(cosine_rows(outputs, reference)))


BUILTIN_METRICS = {
    "accuracy": Metric("accuracy", _accuracy, scale=100.0),
    "f1": Metric("f1", _f1, scale=100.0),
    "cosine": Metric("cosine", _cosine, needs_reference=True),
}


def resolve_metric(metric: str | Callable | Metric) -> Metric:
    """A Metric from a built-in name, a Metric, or a callable `fn(outputs, labels) -> float`."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in BUILTIN_METRICS:
            raise EdgewiseError(f"unknown metric {metric!r}: use one of {', '.join(BUILTIN_METRICS)} "
                                "or pass a callable fn(outputs, labels) -> float")
        return BUILTIN_METRICS[metric]
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), metric)
    raise EdgewiseError(f"metric must be a name or a callable, not {type(metric).__name__}")
