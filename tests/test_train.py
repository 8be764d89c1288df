import numpy as np
import torch

from edgewise.train import fit, shuffled
from tests.conftest import tiny_classifier


def _split():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def test_fit_learns_and_restores_the_best_epoch():
    x, y = _split()
    model = tiny_classifier(classes=2)
    scores = []

    def accuracy(m):
        scores.append(float((m(torch.from_numpy(x)).argmax(1).numpy() == y).mean()))
        return scores[-1]
    result = fit(model, (x, y), epochs=12, lr=3e-2, batch_size=8, score_fn=accuracy, patience=12, show_progress=False)
    assert result.epochs_run == 12 and result.best_score == max(scores) > 0.9
    assert accuracy(model) == max(scores[:-1])   # the best weights came back


def test_max_steps_ends_training_within_an_epoch_and_scores_it():
    x, y = _split()
    calls, scored = [], []

    def loss(model, inputs, labels):
        calls.append(len(inputs))
        return torch.nn.functional.cross_entropy(model(torch.from_numpy(inputs)), labels)
    result = fit(tiny_classifier(classes=2), (x, y), loss_fn=loss, epochs=10, batch_size=16, max_steps=6,
                 score_fn=lambda m: scored.append(1) or 0.5, show_progress=False)
    assert len(calls) == 6 and result.epochs_run == 2 and len(scored) == 2   # 4 + 2 steps


def test_a_list_of_batches_is_shuffled_by_batch():
    batches = [(np.full((2, 1), i, np.float32),) for i in range(8)]
    order = [int(b[0][0, 0]) for b in shuffled(batches, seed=1)]
    assert sorted(order) == list(range(8)) and order != list(range(8))
    assert order == [int(b[0][0, 0]) for b in shuffled(batches, seed=1)]
