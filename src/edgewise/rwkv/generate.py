"""Text generation: prefill the prompt, then sample token by token, streaming text."""

from __future__ import annotations

from collections.abc import Iterator

from edgewise.rwkv.runtime import RWKV
from edgewise.rwkv.sampling import Sampler, Sampling
from edgewise.rwkv.tokenizer import END_OF_TEXT, WorldTokenizer


class TextStream:
    """Turns one stream's sampled tokens into text: whole UTF-8 characters only, and nothing that
    could still become a stop string (which is never emitted). `push` a token, get the text that is
    safe to show; `stopped` is set at end-of-text or a stop string; `finish` flushes the rest."""

    def __init__(self, tokenizer: WorldTokenizer, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.decoder = tokenizer.stream_decoder()
        self.pending = ""  # text held back while it could still become a stop string
        self.stopped: str | None = None   # "stop" (end-of-text or a stop string) once it happened

    def push(self, token: int) -> str:
        if token == END_OF_TEXT:
            self.stopped = "stop"
            return self.finish()
        self.pending += self.decoder.decode(self.tokenizer.id_to_bytes.get(token, b""))   # decode_bytes, not strict
        hit = min((self.pending.index(s) for s in self.stop if s in self.pending), default=None)
        if hit is not None:
            self.stopped = "stop"
            text, self.pending = self.pending[:hit], ""
            return text
        safe = len(self.pending) - _partial_stop(self.pending, self.stop)
        text, self.pending = self.pending[:safe], self.pending[safe:]
        return text

    def finish(self) -> str:
        text, self.pending = self.pending + self.decoder.decode(b"", final=True), ""
        return text


def generate(model: RWKV, tokenizer: WorldTokenizer, prompt: str, max_tokens: int = 100,
             sampling: Sampling | None = None, stop: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield text pieces as they are decoded; stop at `max_tokens`, end-of-text or a stop string
    (which is not yielded)."""
    sampler = Sampler(sampling or Sampling(), model.dims.vocab)
    text = TextStream(tokenizer, stop)
    logits, state = model.forward(tokenizer.encode(prompt) or [END_OF_TEXT])
    for _ in range(max_tokens):
        token = sampler(logits)
        piece = text.push(token)
        if piece:
            yield piece
        if text.stopped:
            return
        logits, state = model.forward([token], state, use_cache=False)
    tail = text.finish()
    if tail:
        yield tail


def _partial_stop(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins a stop string."""
    return max((n for s in stop for n in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:n])), default=0)
