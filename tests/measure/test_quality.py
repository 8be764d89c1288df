import numpy as np
import pytest

from edgewise.measure.quality import BUILTIN_METRICS, cosine_rows


def test_accuracy_f1_and_cosine_by_hand():
    logits = np.array([[2.0, 0.1], [0.2, 1.0], [3.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    assert BUILTIN_METRICS["accuracy"].fn(logits, labels) == 0.75
    # predictions 0,1,0,1 against 0,1,1,1: precision 1, recall 2/3 -> f1 0.8
    assert BUILTIN_METRICS["f1"].fn(logits, labels) == pytest.approx(0.8)
    assert cosine_rows(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]))[0] == pytest.approx(2 ** -0.5)


def test_single_logit_is_binary():
    assert BUILTIN_METRICS["accuracy"].fn(np.array([[0.3], [-2.0]]), np.array([1, 0])) == 1.0
