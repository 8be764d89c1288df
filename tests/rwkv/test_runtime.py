import contextlib

import numpy as np
import pytest
import torch

from edgewise.errors import EdgewiseError
from edgewise.rwkv import RWKV, RWKVState, checkpoint, reference
from edgewise.rwkv.state import StateBatch
from tests.rwkv.conftest import cosine, reference_package, relative_error

TOKENS = [1, 5, 77, 3, 42, 200, 7, 9, 64, 65, 66, 2]


def _reference_logits(path, tokens):
    weights, dims = checkpoint.load(path)
    return reference.forward(reference.params_from(weights, dims), tokens, None, dims)[0]


@pytest.mark.parametrize("shape", ["small", "other"])
def test_fast_fp32_matches_reference_and_the_rwkv_package(checkpoints, shape):
    model = RWKV.load(checkpoints[shape])
    expected = _reference_logits(checkpoints[shape], TOKENS)
    prefill, _ = model.forward(TOKENS, use_cache=False)
    assert relative_error(prefill, expected) < 1e-4
    theirs, _ = reference_package(checkpoints[shape]).forward(TOKENS, None)
    assert relative_error(prefill, theirs.float().numpy()) < 1e-4


@pytest.mark.parametrize("shape", ["small", "other"])
def test_prefill_equals_token_by_token(checkpoints, shape):
    model = RWKV.load(checkpoints[shape])
    whole, whole_state = model.forward(TOKENS, use_cache=False)
    state = None
    for token in TOKENS:
        step, state = model.forward([token], state, use_cache=False)
    assert relative_error(step, whole) < 1e-5
    assert torch.allclose(state.S, whole_state.S, atol=1e-5)


def test_stepwise_logits_follow_the_decode_path(checkpoints):
    model = RWKV.load(checkpoints["small"])
    assert relative_error(model.logits_all(TOKENS, stepwise=True), model.logits_all(TOKENS)) < 1e-5


@pytest.mark.parametrize("quant, min_cosine", [("int8", 0.999), ("int4", 0.95)])  # random weights: int4 worst case
def test_quantized_runtime_stays_close(checkpoints, quant, min_cosine):
    expected = _reference_logits(checkpoints["other"], TOKENS)
    model = RWKV.load(checkpoints["other"], quant=quant)
    logits, _ = model.forward(TOKENS, use_cache=False)
    assert cosine(logits, expected) > min_cosine
    if quant == "int8":  # int4 on random Gaussian weights reorders near-tied logits; its quality is
        assert np.argmax(expected) == np.argmax(logits)  # judged by perplexity on the trained model
    assert model.weight_bytes < RWKV.load(checkpoints["other"]).weight_bytes / (3.5 if quant == "int8" else 5)


@pytest.mark.parametrize("quant, min_cosine", [(None, 0.99999), ("int8", 0.9995), ("int4", 0.999)])
def test_a_batch_step_advances_every_stream_as_its_own_decode_would(checkpoints, quant, min_cosine):
    model = RWKV.load(checkpoints["other"], quant=quant)
    prompts = [TOKENS[:3], TOKENS[2:9], TOKENS[5:6]]
    states = [model.forward(p, use_cache=False)[1] for p in prompts]
    batch = StateBatch.stack(states)
    for step in ([4, 8, 15], [16, 23, 42]):   # two steps: the states the first wrote are the ones read next
        expected = []
        for b, token in enumerate(step):
            logits, states[b] = model.forward([token], states[b], use_cache=False)
            expected.append(logits)
        got = model.step(step, batch)
        assert got.shape == (3, model.dims.vocab)
        assert min(cosine(g, e) for g, e in zip(got, expected)) > min_cosine
    # quantized: the batch's GEMM quantizes its activations to int8, a decode step keeps them fp32
    assert relative_error(batch.get(1).S.numpy(), states[1].S.numpy()) < (0.05 if quant else 1e-5)
    # a stream leaves, another joins: the others carry on from their own rows
    second = batch.get(1)
    batch = batch.without([0]).joined(states[0])
    assert len(batch) == 3 and torch.equal(batch.get(2).S, states[0].S) and torch.equal(batch.get(0).S, second.S)
    assert batch.without([0, 1, 2]) is None
    single = StateBatch.stack([states[2]])
    assert cosine(model.step([9], single)[0], model.forward([9], states[2], use_cache=False)[0]) > 0.99999
    with pytest.raises(EdgewiseError, match="2 tokens for 1 streams"):
        model.step([1, 2], single)


@pytest.mark.parametrize("streams", [1, 3])
@pytest.mark.parametrize("kernels", ["c", "torch"])
def test_a_step_writes_its_logits_into_a_given_buffer(checkpoints, streams, kernels):
    from edgewise.rwkv import native

    model = RWKV.load(checkpoints["other"], quant="int8")
    states = [model.forward(TOKENS[:n + 2], use_cache=False)[1] for n in range(streams)]
    tokens = [4, 8, 15][:streams]
    with native.disabled() if kernels == "torch" else contextlib.nullcontext():
        expected = model.step(tokens, StateBatch.stack(states))
        buffer = np.full((streams, model.dims.vocab), np.nan, np.float32)
        got = model.step(tokens, StateBatch.stack(states), buffer)
        assert np.shares_memory(got, buffer) and np.array_equal(buffer, expected)
        if kernels == "c":   # the C step checks the buffer it writes into
            with pytest.raises(ValueError, match="logits buffer must be float32"):
                model.step(tokens, StateBatch.stack(states), np.empty((streams, model.dims.vocab - 1), np.float32))


def test_state_save_load_gives_identical_logits(tmp_path, checkpoints):
    model = RWKV.load(checkpoints["small"], quant="int8")
    _, state = model.forward(TOKENS, use_cache=False)
    state.save(tmp_path / "state.safetensors")
    restored = RWKVState.load(tmp_path / "state.safetensors")
    a, _ = model.forward([13], state, use_cache=False)
    b, _ = model.forward([13], restored, use_cache=False)
    assert np.array_equal(a, b)
    copy = state.copy()
    model.forward([13], state, use_cache=False)  # forward never changes the state it is given
    assert torch.equal(copy.S, state.S)


def test_prefix_cache_resumes_a_shared_prompt(checkpoints):
    model = RWKV.load(checkpoints["small"])
    system = [1, 2, 3, 4, 5, 6]
    first, _ = model.forward(system + [10, 11])
    assert model.cache.hits == 0
    model.forward(system)
    second, _ = model.forward(system + [10, 11])          # whole prompt cached
    third, _ = model.forward(system + [12])               # the shared prefix resumed
    assert model.cache.hits >= 2
    assert np.array_equal(first, second)
    fresh, _ = model.forward(system + [12], use_cache=False)
    assert relative_error(third, fresh) < 1e-6


def test_converted_file_loads_back_with_the_same_logits(tmp_path, checkpoints):
    for quant in ("int8", "int4"):
        model = RWKV.load(checkpoints["other"], quant=quant)
        path = model.save(tmp_path / f"m-{quant}.safetensors")
        loaded = RWKV.load(path)
        assert loaded.quant == quant
        assert np.array_equal(model.forward(TOKENS, use_cache=False)[0], loaded.forward(TOKENS, use_cache=False)[0])
        state = model.new_state()
        assert np.array_equal(model.forward([13], state)[0], loaded.forward([13], state)[0])   # the fused decode
        with pytest.raises(EdgewiseError, match="already converted"):
            RWKV.load(path, quant="int8" if quant == "int4" else "int4")


def test_bad_tokens_and_state_are_named(tmp_path, checkpoints):
    model = RWKV.load(checkpoints["small"])
    with pytest.raises(EdgewiseError, match="token id 320 is out of range"):
        model.forward([1, 320])
    with pytest.raises(EdgewiseError, match="token id -1 is out of range"):
        model.forward([-1])
    other = RWKV.load(checkpoints["other"])
    with pytest.raises(EdgewiseError, match="another model shape"):
        model.forward([1], other.new_state())
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(EdgewiseError, match="not a saved RWKV state"):
        RWKVState.load(tmp_path / "junk.safetensors")
    with pytest.raises(EdgewiseError, match="quant 'int3'"):
        RWKV.load(checkpoints["small"], quant="int3")
