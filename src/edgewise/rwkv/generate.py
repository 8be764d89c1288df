"""Text generation: prefill the prompt, then sample token by token, streaming text."""

from __future__ import annotations

from collections.abc import Iterator

from edgewise.rwkv.runtime import RWKV
from edgewise.rwkv.sampling import Sampler, Sampling
from edgewise.rwkv.tokenizer import END_OF_TEXT, WorldTokenizer


def generate(model: RWKV, tokenizer: WorldTokenizer, prompt: str, max_tokens: int = 100,
             sampling: Sampling | None = None, stop: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield text pieces as they are decoded; stop at `max_tokens`, end-of-text or a stop string
    (which is not yielded)."""
    sampler = Sampler(sampling or Sampling(), model.dims.vocab)
    decoder = tokenizer.stream_decoder()
    logits, state = model.forward(tokenizer.encode(prompt) or [END_OF_TEXT])
    pending = ""  # text held back while it could still become a stop string
    for _ in range(max_tokens):
        token = sampler(logits)
        if token == END_OF_TEXT:
            break
        pending += decoder.decode(tokenizer.decode_bytes([token]))
        hit = min((pending.index(s) for s in stop if s in pending), default=None)
        if hit is not None:
            yield pending[:hit]
            return
        safe = len(pending) - _partial_stop(pending, stop)
        if safe:
            yield pending[:safe]
            pending = pending[safe:]
        logits, state = model.forward([token], state, use_cache=False)
    yield pending + decoder.decode(b"", final=True)


def _partial_stop(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins a stop string."""
    return max((n for s in stop for n in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:n])), default=0)
