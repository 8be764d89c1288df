"""Sampling: temperature, top-k, top-p, presence/frequency penalties with decay, a seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgewise.errors import EdgewiseError


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn. temperature 0 is greedy; a seed makes output reproducible.

    Penalties subtract `presence_penalty` once and `frequency_penalty` per occurrence from a
    token's logit; occurrence counts decay by `penalty_decay` every step.
    """

    temperature: float = 1.0
    top_p: float = 0.85
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_decay: float = 0.996
    seed: int | None = None

    def __post_init__(self) -> None:
        numbers = (self.temperature, self.top_p, self.presence_penalty, self.frequency_penalty, self.penalty_decay)
        if not all(np.isfinite(numbers)):
            raise EdgewiseError("sampling: temperature, top-p, penalties and penalty-decay must be finite numbers")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or not 0 <= self.penalty_decay <= 1:
            raise EdgewiseError("sampling: need temperature >= 0, 0 < top-p <= 1, top-k >= 0, 0 <= penalty-decay <= 1")
        if self.seed is not None and self.seed < 0:
            raise EdgewiseError(f"sampling: --seed {self.seed} is negative; give a whole number >= 0")


class Sampler:
    def __init__(self, settings: Sampling, vocab: int) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        self.counts = np.zeros(vocab, np.float64)

    def __call__(self, logits: np.ndarray) -> int:
        s = self.settings
        if not np.isfinite(logits).all():
            raise EdgewiseError("the model's logits are not finite (NaN or inf): its weights are damaged; "
                                "convert or download the checkpoint again")
        scores = logits.astype(np.float64) - s.presence_penalty * (self.counts > 0) - s.frequency_penalty * self.counts
        if s.temperature == 0:
            token = int(np.argmax(scores))
        else:
            token = int(self.rng.choice(len(scores), p=self.probabilities(scores)))
        self.counts *= s.penalty_decay
        self.counts[token] += 1
        return token

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        s = self.settings
        scores = scores / s.temperature
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        order = np.argsort(-probs)
        keep = len(order) if s.top_k == 0 else s.top_k
        cumulative = np.cumsum(probs[order])
        keep = min(keep, int(np.searchsorted(cumulative, s.top_p)) + 1)   # the smallest set reaching top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[:keep]] = True
        probs = np.where(mask, probs, 0.0)
        return probs / probs.sum()
