"""Continuous batching for one RWKV model, and the recurrent states it keeps between requests.

One thread per resident RWKV model owns the model. New streams are prefilled between steps (from
the cached state of their longest cached text prefix, so a follow-up turn pays only for its new
text); then every live stream advances by one token per step, all of them in one `RWKV.step`
(every matrix multiplies one row per stream: its weights are read once per step). Streams join
and leave at token boundaries; one whose client went away leaves at the next.

An RWKV state has a fixed size (it does not grow with the context), so a conversation's state is
a small, countable resource: `StateCache` keeps them LRU, in bytes the pool counts.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgewise.errors import EdgewiseError
from edgewise.rwkv.generate import TextStream
from edgewise.rwkv.runtime import RWKV
from edgewise.rwkv.sampling import Sampler, Sampling, draw
from edgewise.rwkv.state import RWKVState, StateBatch
from edgewise.rwkv.tokenizer import END_OF_TEXT, WorldTokenizer

log = logging.getLogger("edgewise.serve")
STATE_ENTRIES = 512   # at most this many cached states per model (the byte budget usually binds first)


def _entry_bytes(entry: tuple[RWKVState, np.ndarray, int]) -> int:
    """A cached state's bytes with its logits' (the vocabulary's floats: a quarter of a small model's state)."""
    return entry[0].size_bytes + entry[1].nbytes


class StateCache:
    """States after texts this model has read, keyed by the text, LRU. Text, not tokens: a client
    sends a conversation back as text, and the tokens of a concatenation need not be the tokens of
    its parts; the new text after the longest cached prefix is tokenized on its own."""

    def __init__(self, room: Callable[[], int] | None = None) -> None:
        self._entries: OrderedDict[str, tuple[RWKVState, np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        # The bytes the server's budget has left (set by the pool): a new state that would pass it
        # evicts older ones first, and is not kept if it still does not fit. The budget holds while
        # a generation runs, not only once the pool checks it again at the request's end.
        self.room = room

    def longest(self, text: str) -> tuple[str, RWKVState | None, np.ndarray | None, int]:
        """(key, a copy of its state, its logits, its tokens) for the longest cached prefix of `text`."""
        with self._lock:
            key = max((k for k in self._entries if text.startswith(k)), key=len, default=None)
            if key is None:
                return "", None, None, 0
            self._entries.move_to_end(key)
            state, logits, tokens = self._entries[key]
            return key, state.copy(), logits, tokens

    def read_beyond(self, text: str, start: int) -> bool:
        """Whether a cached state read `text` past its first `start` characters: the model read (part
        of) what follows there, as it stands in `text`."""
        with self._lock:
            return any(len(k) > start and text.startswith(k) for k in self._entries)

    def put(self, text: str, state: RWKVState, logits: np.ndarray, tokens: int) -> None:
        with self._lock:
            if text in self._entries:
                self.bytes -= _entry_bytes(self._entries.pop(text))
            need = state.size_bytes + logits.nbytes
            if self.room is not None:
                while self._entries and self.room() < need:
                    self.bytes -= _entry_bytes(self._entries.popitem(last=False)[1])
                if self.room() < need:
                    return
            entry = self._entries[text] = (state.copy(), logits.copy(), tokens)
            self.bytes += _entry_bytes(entry)
            while len(self._entries) > STATE_ENTRIES:
                self.bytes -= _entry_bytes(self._entries.popitem(last=False)[1])

    def evict_one(self) -> int:
        """Drop the least recently used state; the bytes freed (0 when empty)."""
        with self._lock:
            if not self._entries:
                return 0
            freed = _entry_bytes(self._entries.popitem(last=False)[1])
            self.bytes -= freed
            return freed

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class Request:
    prompt: str
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...] = ()


@dataclass
class Stream:
    """One request's generation: the batcher thread fills it, the event loop reads `events`."""

    request: Request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cpu_s: float = 0.0
    fed: list[int] = field(default_factory=list)
    next_token: int = 0
    text: TextStream | None = None
    sampler: Sampler | None = None

    def emit(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


def _deliver(items: list[tuple[Stream, str, object]]) -> None:
    for stream, kind, value in items:
        stream.events.put_nowait((kind, value))


class Batcher:
    """The thread that runs one RWKV model for every stream of it."""

    def __init__(self, model: RWKV, tokenizer: WorldTokenizer, cache: StateCache) -> None:
        self.model, self.tokenizer, self.cache = model, tokenizer, cache
        self.incoming: queue.Queue[Stream] = queue.Queue()
        self.active: list[Stream] = []
        self.batch: StateBatch | None = None
        self.steps = 0
        self.streams_per_step = 0   # summed: / steps = the mean batch
        self._outbox: list[tuple[Stream, str, object]] = []   # what a step produced, handed over at once
        self._logits = np.empty((0, model.dims.vocab), np.float32)   # a step's, rewritten by the next
        self._pending, self._pending_lock = 0, threading.Lock()
        # Set by the runner once it has run one: what a live stream holds besides its row of the batch's
        # states (its logits, the sampler's vocabulary-sized arrays, its state again while the batch is
        # rebuilt as streams join and leave), and all of it with the state, for a stream not yet in the batch.
        self.work_bytes = self.stream_bytes = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="edgewise-rwkv-batcher", daemon=True)
        self._thread.start()

    def submit(self, stream: Stream) -> None:
        with self._pending_lock:
            self._pending += 1
        self.incoming.put(stream)

    @property
    def batch_bytes(self) -> int:
        """What the live streams hold: the batch's states and each stream's working memory, and those
        submitted but not yet in the batch at a whole stream each."""
        batch = self.batch
        return ((batch.size_bytes if batch is not None else 0) + len(self.active) * self.work_bytes
                + self._pending * self.stream_bytes)

    def close(self) -> None:
        self._closing = True
        self._thread.join(timeout=10)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closing:
            try:
                self._admit(wait=not self.active)
                if self.active:
                    self._step()
                self._flush()
            except Exception as exc:   # a bug: fail the streams in flight, keep serving the next ones
                log.exception("RWKV batcher failed")
                self._flush()
                for stream in self.active:
                    stream.emit("error", (500, f"generation failed: {exc}"))
                self.active, self.batch = [], None

    def _admit(self, wait: bool) -> None:
        while True:
            try:
                stream = self.incoming.get(timeout=0.05) if wait else self.incoming.get_nowait()
            except queue.Empty:
                return
            wait = False
            try:
                if not stream.cancelled:
                    self._prefill(stream)
            except EdgewiseError as exc:   # this request's own problem (text that is not UTF-8): its answer only
                self._emit(stream, "error", (400, str(exc)))
            finally:
                with self._pending_lock:
                    self._pending -= 1
            self._flush()   # its first token now, not after the other prefills

    def _emit(self, stream: Stream, kind: str, value) -> None:
        self._outbox.append((stream, kind, value))

    def _flush(self) -> None:
        """One wake-up of each event loop per step, not one per stream and token."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for item in self._outbox:
            by_loop.setdefault(item[0].loop, []).append(item)
        self._outbox = []
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _prefill(self, stream: Stream) -> None:
        request, started = stream.request, time.process_time()
        key, state, logits, cached_tokens = self.cache.longest(request.prompt)
        tokens = self.tokenizer.encode(request.prompt[len(key):])
        if not tokens and state is None:
            tokens = [END_OF_TEXT]   # an empty prompt starts from the document boundary, as generate does
        if tokens:
            logits, state = self.model.forward(tokens, state, use_cache=False)
            self.cache.put(request.prompt, state, logits, cached_tokens + len(tokens))
        stream.prompt_tokens, stream.cached_tokens = cached_tokens + len(tokens), cached_tokens
        stream.sampler = Sampler(request.sampling, self.model.dims.vocab)
        stream.text = TextStream(self.tokenizer, request.stop)
        stream.cpu_s += time.process_time() - started
        if self._sample(stream, logits):
            self._finish(stream, state, logits)
            return
        self.active.append(stream)
        self.batch = StateBatch.stack([state]) if self.batch is None else self.batch.joined(state)

    def _sample(self, stream: Stream, logits: np.ndarray, token: int | None = None) -> bool:
        """Draw the next token (unless given: drawn with the step's) and emit its text; True when the
        stream is done."""
        token = stream.sampler(logits) if token is None else token
        stream.completion_tokens += 1
        piece = stream.text.push(token)
        if piece:
            self._emit(stream, "text", piece)
        stream.next_token = token
        return stream.text.stopped is not None or stream.completion_tokens >= stream.request.max_tokens or stream.cancelled

    def _step(self) -> None:
        started = time.process_time()
        B = len(self.active)
        if self._logits.shape[0] != B:   # one buffer while the batch keeps its size (see native._logits_out)
            self._logits = np.empty((B, self.model.dims.vocab), np.float32)
        logits = self.model.step([s.next_token for s in self.active], self.batch, self._logits)
        tokens = draw([s.sampler for s in self.active], logits)   # every stream's next, together
        share = (time.process_time() - started) / len(self.active)
        self.steps += 1
        self.streams_per_step += len(self.active)
        leaving = []
        for row, stream in enumerate(self.active):
            stream.fed.append(stream.next_token)
            stream.cpu_s += share
            if stream.cancelled or self._sample(stream, logits[row], tokens[row]):
                leaving.append(row)
                self._finish(stream, self.batch.get(row), logits[row])
        if leaving:
            self.active = [s for row, s in enumerate(self.active) if row not in leaving]
            self.batch = self.batch.without(leaving)

    def _finish(self, stream: Stream, state: RWKVState, logits: np.ndarray) -> None:
        """Keep the state after everything the stream read (its prompt and the tokens it fed back),
        under that text: the next turn of the conversation starts with it."""
        if stream.fed:
            self.cache.put(stream.request.prompt + self.tokenizer.decode(stream.fed, strict=False), state, logits,
                           stream.prompt_tokens + len(stream.fed))
        tail = stream.text.finish() if stream.text.stopped is None else ""
        if tail:
            self._emit(stream, "text", tail)
        self._emit(stream, "done", "stop" if stream.text.stopped else "length")
