import numpy as np
import pytest

from edgewise.data import alternate, first_inputs, iter_batches, num_samples
from edgewise.errors import EdgewiseError


def test_array_split_streams_in_batches_with_labels():
    x, y = np.arange(10, dtype=np.float32)[:, None], np.arange(10)
    batches = list(iter_batches((x, y), batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b[1] for b in batches]), y)


def test_limit_stops_early_for_arrays_and_iterables():
    x = np.zeros((10, 3), np.float32)
    assert sum(len(b[0]) for b in iter_batches((x,), batch_size=4, limit=5)) == 5
    batches = [(x[:4],), (x[4:8],), (x[8:],)]
    got = list(iter_batches(batches, limit=6))
    assert [len(b[0]) for b in got] == [4, 2] and got[0][1] is None


def test_dict_inputs_keep_their_names():
    x = {"input_ids": np.zeros((5, 7), np.int64), "attention_mask": np.ones((5, 7), np.int64)}
    (batch, labels), *_ = iter_batches((x,), batch_size=2)
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape == (2, 7)
    assert labels is None


def test_mismatched_inputs_and_labels_are_named():
    with pytest.raises(EdgewiseError, match="5 inputs but 4 labels"):
        list(iter_batches((np.zeros((5, 2)), np.zeros(4)), where="eval"))
    with pytest.raises(EdgewiseError, match="disagree"):
        num_samples((np.zeros((5, 2)), np.zeros((4, 2))))


def test_missing_or_empty_split_says_what_to_give():
    with pytest.raises(EdgewiseError, match="no calibration split"):
        list(iter_batches(None, where="calibration"))
    with pytest.raises(EdgewiseError, match="empty"):
        list(iter_batches((np.zeros((0, 2)),)))


def test_first_inputs_repeats_short_splits():
    x = np.arange(3, dtype=np.float32)[:, None]
    assert first_inputs((x,), 7)[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_alternate_halves_are_disjoint_and_cover_the_split():
    x, y = np.arange(10, dtype=np.float32)[:, None], np.arange(10)
    even, odd = alternate((x, y), 0), alternate((x, y), 1)
    assert even[1].tolist() == [0, 2, 4, 6, 8] and odd[1].tolist() == [1, 3, 5, 7, 9]
    batches = [((x[i:i + 2],), ) for i in range(0, 10, 2)]   # a split given as batches: every other batch
    halves = [[b[0][0].ravel().tolist() for b in alternate(batches, parity)] for parity in (0, 1)]
    assert halves == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7]]]
    assert list(alternate(batches, 1)) and list(alternate(batches, 1))   # re-iterable
