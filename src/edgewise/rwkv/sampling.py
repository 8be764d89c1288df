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


SORTED = 4096   # nuclei larger than this are cut at a threshold found by sorting values, not indices
DAMAGED = ("the model's logits are not finite (NaN or inf): its weights are damaged; "
           "convert or download the checkpoint again")


class Sampler:
    def __init__(self, settings: Sampling, vocab: int) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        penalised = bool(settings.presence_penalty or settings.frequency_penalty)
        # occurrence counts, only where a penalty reads them: a vocabulary of doubles (512 KB at 65536)
        # for each live stream of a server otherwise
        self.counts = np.zeros(vocab, np.float64) if penalised else None
        # drawn by the C kernels where they run (see `draw`): greedily, or from the whole vocabulary
        # (top-p 1, no top-k: OpenAI's defaults), without penalties
        self.whole = not penalised and (settings.temperature == 0 or
                                        (settings.top_p >= 1 and (settings.top_k == 0 or settings.top_k >= vocab)))

    def __call__(self, logits: np.ndarray) -> int:
        return draw([self], np.asarray(logits, np.float32)[None])[0]

    def _here(self, logits: np.ndarray) -> int:
        """The next token, drawn in numpy."""
        s = self.settings
        scores = np.asarray(logits, np.float32)
        # NaN or an infinity anywhere makes the largest or the smallest one so: two passes over the
        # vocabulary, not an array of 65536 flags per token and stream
        top = scores.max()
        if not (np.isfinite(top) and np.isfinite(scores.min())):
            raise EdgewiseError(DAMAGED)
        if s.presence_penalty or s.frequency_penalty:
            scores = scores - (s.presence_penalty * (self.counts > 0) + s.frequency_penalty * self.counts).astype(np.float32)
            top = scores.max()
        if s.temperature == 0:
            token = int(np.argmax(scores))
        else:
            tokens, probs = self.nucleus(scores, top)
            drawn = _draw(probs, self.rng.random())
            token = drawn if tokens is None else int(tokens[drawn])
        if s.presence_penalty or s.frequency_penalty:
            self.counts *= s.penalty_decay
            self.counts[token] += 1
        return token

    def nucleus(self, scores: np.ndarray, top: float | None = None) -> tuple[np.ndarray | None, np.ndarray]:
        """The tokens that may be drawn (None: every one, in order) and their probabilities (not
        normalised): the largest whose mass reaches top_p, at most top_k of them. Only tokens above a
        threshold whose mass already reaches top_p are sorted (the nucleus lies among them), not the
        whole vocabulary: sorting 65536 probabilities cost more than a decode step. `top`: the largest
        score, where the caller has it."""
        s = self.settings
        probs = scores - (scores.max() if top is None else top)   # one vocabulary-sized array, exponentiated in place
        probs *= np.float32(1 / s.temperature)
        np.exp(probs, out=probs)
        limit = s.top_k or len(probs)
        if s.top_p >= 1 and limit >= len(probs):
            return None, probs   # unnormalised: drawn against their sum
        probs = probs / probs.sum(dtype=np.float64)
        threshold = probs.max()
        while True:
            threshold /= 16
            candidates = np.flatnonzero(probs >= threshold)
            if probs[candidates].sum() >= s.top_p or len(candidates) >= limit or threshold < 1e-30:
                break
        if len(candidates) > SORTED and limit >= len(candidates):
            # a flat distribution: sort the values alone (an argsort of tens of thousands cost 8 ms),
            # find the smallest probability the nucleus holds, keep every token at or above it
            values = probs[candidates].astype(np.float32)
            descending = np.sort(values)[::-1]
            count = min(int(np.searchsorted(np.cumsum(descending, dtype=np.float64), s.top_p)) + 1, len(values))
            keep = candidates[values >= descending[count - 1]]
            return keep, probs[keep]
        if len(candidates) > limit:
            candidates = candidates[np.argpartition(-probs[candidates], limit - 1)[:limit]]
        ranked = candidates[np.argsort(-probs[candidates], kind="stable")]
        cumulative = np.cumsum(probs[ranked], dtype=np.float64)
        keep = min(int(np.searchsorted(cumulative, s.top_p)) + 1, len(ranked))   # the smallest set reaching top_p
        return ranked[:keep], probs[ranked[:keep]]

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """The distribution tokens are drawn from, over the whole vocabulary."""
        tokens, probs = self.nucleus(np.asarray(scores, np.float32))
        full = np.zeros(len(scores))
        full[slice(None) if tokens is None else tokens] = probs / probs.sum()
        return full


def draw(samplers: list[Sampler], logits: np.ndarray) -> list[int]:
    """The next token of each row of logits [B, vocab], row b's drawn by samplers[b]. The rows whose
    sampler reads the whole vocabulary are drawn together by the C kernels where they run (`ew_sample`:
    one pass over a row, on the team's threads; the same tokens as numpy's for the same u, up to its
    exponentials' 2 ulp), the others here: numpy's five passes and vocabulary-sized arrays cost ~0.13 ms
    a row, serial on a server's batcher thread between its steps."""
    from edgewise.rwkv import native

    lib = native.library()
    tokens: list[int | None] = [None] * len(samplers)
    whole = [b for b, sampler in enumerate(samplers) if sampler.whole] if lib is not None else []
    if whole:
        rows = np.ascontiguousarray(logits if len(whole) == len(samplers) else logits[whole], np.float32)
        temperature = [samplers[b].settings.temperature for b in whole]
        u = [samplers[b].rng.random() if t else 0.0 for b, t in zip(whole, temperature)]
        drawn = native.sample(lib, rows, np.array(temperature), np.array(u))
        if drawn is None:
            raise EdgewiseError(DAMAGED)
        for b, token in zip(whole, drawn.tolist()):
            tokens[b] = token
    return [samplers[b]._here(logits[b]) if token is None else token for b, token in enumerate(tokens)]


def _draw(weights: np.ndarray, u: float, block: int = 256) -> int:
    """The index i at which the running sum of `weights` passes u x their total (u in [0, 1)): an
    inverse-CDF draw, in two levels (the sums of blocks, then one block): a running sum over the
    whole vocabulary was the slowest part of sampling."""
    n = len(weights)
    whole = n // block * block   # no padded float64 copy of the vocabulary: its blocks are summed in place
    sums = weights[:whole].reshape(-1, block).sum(1, dtype=np.float64)
    if whole < n:
        sums = np.append(sums, weights[whole:].sum(dtype=np.float64))
    sums = sums.cumsum()
    target = u * sums[-1]
    b = min(int(np.searchsorted(sums, target, side="right")), len(sums) - 1)
    inside = weights[b * block:(b + 1) * block].cumsum(dtype=np.float64)
    before = sums[b - 1] if b else 0.0
    i = b * block + int(np.searchsorted(inside, target - before, side="right"))
    return min(i, n - 1)
