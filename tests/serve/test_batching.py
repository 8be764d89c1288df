"""Streams batched together give what each would alone; states are cached by text and counted."""

from __future__ import annotations

import asyncio

import pytest

from edgewise.rwkv import RWKV
from edgewise.rwkv.generate import generate
from edgewise.rwkv.sampling import Sampling
from edgewise.rwkv.synthetic import random_checkpoint
from edgewise.rwkv.tokenizer import world_tokenizer
from edgewise.serve.batching import Batcher, Request, StateCache, Stream


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return RWKV.load(random_checkpoint(tmp_path_factory.mktemp("batch") / "m.pth", layers=2, width=128,
                                       vocab=65536, seed=5))


async def _collect(stream: Stream) -> tuple[str, str]:
    parts = []
    while True:
        kind, value = await stream.events.get()
        if kind == "text":
            parts.append(value)
        elif kind == "done":
            return "".join(parts), value
        else:
            raise AssertionError(value)


def _run_streams(batcher: Batcher, requests: list[Request]) -> list[tuple[Stream, str, str]]:
    async def main():
        loop = asyncio.get_running_loop()
        streams = [Stream(r, loop) for r in requests]
        for s in streams:
            batcher.submit(s)
        results = await asyncio.gather(*(_collect(s) for s in streams))
        return [(s, text, reason) for s, (text, reason) in zip(streams, results)]
    return asyncio.run(main())


def test_streams_decoded_together_give_each_its_own_generation(model):
    tokenizer = world_tokenizer()
    prompts = ["Once upon a time", "def main():", "The river", "1, 2, 3,"]
    greedy = Sampling(temperature=0)
    batcher = Batcher(model, tokenizer, StateCache())
    try:
        results = _run_streams(batcher, [Request(p, 12 + 3 * i, greedy) for i, p in enumerate(prompts)])
    finally:
        batcher.close()
    for i, (stream, text, reason) in enumerate(results):
        alone = "".join(generate(model, tokenizer, prompts[i], 12 + 3 * i, greedy))
        assert text == alone and reason == "length" and stream.completion_tokens == 12 + 3 * i
    assert batcher.steps > 0 and batcher.streams_per_step / batcher.steps > 1.5   # they did run together
    assert batcher.batch is None and not batcher.active                          # and all left


def test_a_stop_string_ends_a_stream_without_being_emitted(model):
    tokenizer = world_tokenizer()
    sampling = Sampling(temperature=0)
    alone = "".join(generate(model, tokenizer, "abc", 30, sampling))
    stop = alone[5:8]
    batcher = Batcher(model, tokenizer, StateCache())
    try:
        [(stream, text, reason)] = _run_streams(batcher, [Request("abc", 30, sampling, (stop,))])
    finally:
        batcher.close()
    assert reason == "stop" and text == alone[:alone.index(stop)]


def test_the_state_cache_resumes_the_longest_cached_text_and_counts_its_bytes(model):
    cache = StateCache()
    _, state = model.forward([1, 2, 3], use_cache=False)
    logits, longer = model.forward([4], state, use_cache=False)
    cache.put("User: hi", state, logits, 3)
    cache.put("User: hi there", longer, logits, 4)
    entry = state.size_bytes + logits.nbytes   # a state's bytes and its logits'
    assert cache.bytes == 2 * entry and len(cache) == 2
    key, got, _, tokens = cache.longest("User: hi there, how are you")
    assert key == "User: hi there" and tokens == 4 and got is not longer and (got.S == longer.S).all()
    assert cache.longest("Assistant:")[0] == ""
    assert cache.evict_one() == entry   # the least recently used: "User: hi"
    assert cache.longest("User: hi!")[0] == "" and cache.longest("User: hi there!")[0] == "User: hi there"
    assert cache.evict_one() == entry and cache.bytes == 0 and cache.evict_one() == 0


def test_the_state_cache_never_takes_more_than_the_budget_has_left(model):
    _, state = model.forward([1, 2, 3], use_cache=False)
    logits, _ = model.forward([4], state, use_cache=False)
    entry = state.size_bytes + logits.nbytes
    others = 3 * entry   # what the rest of the server holds, against a budget of 5.5 entries
    cache = StateCache(room=lambda: int(5.5 * entry) - others - cache.bytes)
    for i in range(4):
        cache.put(f"turn {i}", state, logits, 3)
        assert others + cache.bytes <= 5.5 * entry
    assert len(cache) == 2 and cache.longest("turn 3")[0] == "turn 3" and cache.longest("turn 1")[0] == ""
    others = 5 * entry   # no room even when empty: the state is not kept
    cache.put("turn 4", state, logits, 3)
    assert len(cache) == 0 and cache.bytes == 0


def test_a_submitted_stream_counts_its_state_before_it_joins_the_batch(model):
    batcher = Batcher(model, world_tokenizer(), StateCache())
    batcher.stream_bytes, batcher.work_bytes = 1000, 600
    batcher._closing = True   # no thread takes the stream: it stays submitted
    batcher._thread.join()
    batcher.submit(Stream(Request("Hi", 4, Sampling(temperature=0)), None))
    assert batcher.batch_bytes == 1000


def test_a_cancelled_stream_leaves_at_the_next_token(model):
    tokenizer = world_tokenizer()
    batcher = Batcher(model, tokenizer, StateCache())

    async def main():
        stream = Stream(Request("x", 10_000, Sampling()), asyncio.get_running_loop())
        batcher.submit(stream)
        await stream.events.get()
        stream.cancelled = True
        while (await stream.events.get())[0] != "done":
            pass
        return stream
    try:
        stream = asyncio.run(main())
    finally:
        batcher.close()
    assert stream.completion_tokens < 100 and not batcher.active


def test_an_answer_is_written_back_as_the_model_read_it():
    from edgewise.serve.app import ChatMessage, chat_prompt

    turns = [ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello"),
             ChatMessage(role="user", content="More")]
    assert chat_prompt(turns) == "User: Hi\n\nAssistant: Hello\n\nUser: More\n\nAssistant:"   # by hand
    read = "User: Hi\n\nAssistant:Hel"   # a state that read the start of "Hello" right after the colon
    known = lambda text, start: text.startswith(read) and len(read) > start   # noqa: E731
    assert chat_prompt(turns, known) == "User: Hi\n\nAssistant:Hello\n\nUser: More\n\nAssistant:"
    spaced = [turns[0], ChatMessage(role="assistant", content=" Hello"), turns[2]]
    assert chat_prompt(spaced) == "User: Hi\n\nAssistant: Hello\n\nUser: More\n\nAssistant:"
