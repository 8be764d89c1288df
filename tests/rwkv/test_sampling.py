import numpy as np
import pytest

from edgewise.errors import EdgewiseError
from edgewise.rwkv.generate import _partial_stop, generate
from edgewise.rwkv.sampling import Sampler, Sampling


def test_seed_reproduces_and_temperature_zero_is_greedy():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    draws = lambda seed: [Sampler(Sampling(seed=seed, top_p=1.0), 1000)(logits) for _ in range(5)]  # noqa: E731
    assert draws(7) == draws(7)
    assert Sampler(Sampling(temperature=0), 1000)(logits) == int(np.argmax(logits))


def test_top_k_and_top_p_cut_the_tail():
    logits = np.array([5.0, 4.0, 3.0, 0.0, -1.0])
    probs = Sampler(Sampling(top_k=2, top_p=1.0), 5).probabilities(logits)
    assert np.count_nonzero(probs) == 2 and probs[:2].sum() == pytest.approx(1.0)
    probs = Sampler(Sampling(top_p=0.5), 5).probabilities(logits)
    assert np.count_nonzero(probs) == 1  # the top token alone holds over half the mass


def test_penalties_discourage_repeats_and_decay():
    logits = np.zeros(3)
    sampler = Sampler(Sampling(temperature=0, presence_penalty=1.0, frequency_penalty=0.5, penalty_decay=0.5), 3)
    assert [sampler(logits) for _ in range(3)] == [0, 1, 2]  # each used token is pushed down
    assert sampler.counts.tolist() == [0.25, 0.5, 1.0]


def test_bad_settings_are_refused():
    with pytest.raises(EdgewiseError, match="top-p"):
        Sampling(top_p=0)


class ScriptedModel:
    """Emits a fixed token sequence: enough to test streaming and stop strings."""

    class dims:
        vocab = 65536

    def __init__(self, script):
        self.script, self.position = script, 0

    def forward(self, tokens, state=None, use_cache=True):
        logits = np.zeros(self.dims.vocab, np.float32)
        logits[self.script[min(self.position, len(self.script) - 1)]] = 100
        self.position += 1
        return logits, state


def test_generation_streams_and_stops_before_the_stop_string():
    from edgewise.rwkv.tokenizer import world_tokenizer
    tokenizer = world_tokenizer()
    script = tokenizer.encode("Hello there. END of text that must not appear")
    pieces = list(generate(ScriptedModel(script), tokenizer, "x", 50, Sampling(temperature=0), stop=("END",)))
    assert "".join(pieces) == "Hello there. "
    assert _partial_stop("abc EN", ("END",)) == 2 and _partial_stop("abc", ("END",)) == 0


def test_logits_that_are_not_finite_are_named_not_sampled():
    logits = np.zeros(10)
    logits[3] = np.nan
    with pytest.raises(EdgewiseError, match="logits are not finite"):
        Sampler(Sampling(seed=1), 10)(logits)


@pytest.mark.parametrize("scale, top_p, top_k, vocab", [(3.0, 0.85, 0, 4096), (0.3, 0.5, 0, 4096), (3.0, 0.99, 5, 4096),
                                                       (1.0, 1.0, 40, 4096), (0.1, 0.8, 0, 30000)])   # flat: cut, not sorted
def test_the_nucleus_is_the_smallest_set_of_largest_tokens_reaching_top_p(scale, top_p, top_k, vocab):
    logits = (np.random.default_rng(1).standard_normal(vocab) * scale).astype(np.float32)
    got = Sampler(Sampling(top_p=top_p, top_k=top_k), vocab).probabilities(logits)
    probs = np.exp(logits - logits.max()).astype(np.float64)
    probs /= probs.sum()
    order = np.argsort(-probs)
    keep = min(top_k or vocab, int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1)   # by a full sort
    assert set(np.flatnonzero(got)) == set(order[:keep].tolist())
    assert got.sum() == pytest.approx(1.0) and np.allclose(got[order[:keep]], probs[order[:keep]] / probs[order[:keep]].sum(), rtol=1e-5)


def test_draws_follow_the_probabilities():
    from edgewise.rwkv.sampling import _draw

    weights = np.array([0.1, 0.0, 0.5, 0.4])
    assert [_draw(weights, u, block=2) for u in (0.0, 0.099, 0.1, 0.59, 0.6, 0.999)] == [0, 0, 2, 2, 3, 3]
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05] + [1e-12] * 1000))
    sampler = Sampler(Sampling(top_p=1.0, seed=4), len(logits))
    counts = np.bincount([sampler(logits) for _ in range(20000)], minlength=len(logits))[:4] / 20000
    assert np.allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.015)
