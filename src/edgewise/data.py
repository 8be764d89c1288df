"""Data splits and model inputs.

A split is `(X, y)`, `(X,)` or an iterable of such batches. X is one array, a tuple of arrays
(positional inputs) or a dict of arrays (named inputs); every array has the sample axis first.
Everything here streams: a split is read batch by batch, never gathered whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from edgewise.errors import EdgewiseError

Inputs = np.ndarray | tuple | dict
Batch = tuple[Inputs, np.ndarray | None]


def _arrays(inputs: Inputs) -> list[np.ndarray]:
    if isinstance(inputs, Mapping):
        return [np.asarray(a) for a in inputs.values()]
    if isinstance(inputs, (tuple, list)):
        return [np.asarray(a) for a in inputs]
    return [np.asarray(inputs)]


def num_samples(inputs: Inputs) -> int:
    """Length of the sample axis, checked to agree across all arrays of a structured input."""
    lengths = {a.shape[0] if a.ndim else 0 for a in _arrays(inputs)}
    if len(lengths) != 1:
        raise EdgewiseError(f"inputs disagree on the number of samples ({sorted(lengths)}): "
                            "give every input array the same first dimension")
    return lengths.pop()


def take(inputs: Inputs, index: slice | np.ndarray) -> Inputs:
    """The same structure with `index` applied to the sample axis of every array."""
    if isinstance(inputs, Mapping):
        return {k: np.asarray(v)[index] for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(np.asarray(v)[index] for v in inputs)
    return np.asarray(inputs)[index]


def concat(parts: list[Inputs]) -> Inputs:
    """Join inputs of the same structure along the sample axis."""
    first = parts[0]
    if isinstance(first, Mapping):
        return {k: np.concatenate([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(first)))
    return np.concatenate(parts)


def is_array_split(split: Any) -> bool:
    """True for `(X, y)` / `(X,)` of arrays; False for an iterable of batches."""
    return (isinstance(split, tuple) and len(split) in (1, 2) and _looks_like_inputs(split[0])
            and (len(split) == 1 or split[1] is None or isinstance(split[1], np.ndarray)))


def _looks_like_inputs(x: Any) -> bool:
    if isinstance(x, np.ndarray | Mapping):
        return True
    return isinstance(x, tuple | list) and len(x) > 0 and all(isinstance(a, np.ndarray) for a in x)


def _split_batch(item: Any, where: str) -> Batch:
    if isinstance(item, tuple) and len(item) in (1, 2) and _looks_like_inputs(item[0]):
        return item[0], (np.asarray(item[1]) if len(item) == 2 and item[1] is not None else None)
    if _looks_like_inputs(item):
        return item, None
    raise EdgewiseError(f"{where}: a batch must be (X, y) or (X,) with X an array, a tuple or a dict "
                        f"of arrays; got {type(item).__name__}")


def iter_batches(split: Any, batch_size: int = 64, limit: int | None = None,
                 where: str = "split") -> Iterator[Batch]:
    """Yield `(X, y)` batches of at most `batch_size` samples (y is None without labels).

    Args:
        split: `(X, y)`, `(X,)` or an iterable of batches.
        batch_size: samples per batch when the split is arrays (batches of an iterable pass as given).
        limit: stop after this many samples.
        where: the split's name, for error messages.
    """
    if split is None:
        raise EdgewiseError(f"the task has no {where} split: give Task({where}=(X, y)) or (X,)")
    remaining = limit if limit is not None else float("inf")
    if is_array_split(split):
        inputs, labels = _split_batch(split, where)
        total = num_samples(inputs)
        if labels is not None and len(labels) != total:
            raise EdgewiseError(f"{where}: {total} inputs but {len(labels)} labels; give one label per sample")
        if total == 0:
            raise EdgewiseError(f"{where} split is empty: give it at least one sample")
        for start in range(0, total, batch_size):
            if remaining <= 0:
                return
            stop = min(total, start + batch_size, start + int(min(remaining, total)))
            yield take(inputs, slice(start, stop)), (labels[start:stop] if labels is not None else None)
            remaining -= stop - start
        return
    if not isinstance(split, Iterable):
        raise EdgewiseError(f"{where} split must be (X, y), (X,) or an iterable of batches; "
                            f"got {type(split).__name__}")
    for item in split:
        if remaining <= 0:
            return
        inputs, labels = _split_batch(item, where)
        count = num_samples(inputs)
        if count > remaining:
            inputs = take(inputs, slice(0, int(remaining)))
            labels = labels[: int(remaining)] if labels is not None else None
            count = int(remaining)
        yield inputs, labels
        remaining -= count


def first_inputs(split: Any, count: int, where: str = "split") -> Inputs:
    """The first `count` samples of a split, repeated if it holds fewer."""
    parts, have = [], 0
    for inputs, _ in iter_batches(split, batch_size=count, limit=count, where=where):
        parts.append(inputs)
        have += num_samples(inputs)
    joined = concat(parts)
    if have < count:
        index = np.arange(count) % have
        joined = take(joined, index)
    return joined


class _EveryOther:
    """Every other batch of a split, re-iterable (for splits given as iterables of batches)."""

    def __init__(self, split: Any, parity: int) -> None:
        self.split, self.parity = split, parity

    def __iter__(self) -> Iterator[Batch]:
        for index, batch in enumerate(iter_batches(self.split, where="eval")):
            if index % 2 == self.parity:
                yield batch


def alternate(split: Any, parity: int) -> Any:
    """The samples at even (parity 0) or odd (parity 1) positions of an array split; of a split
    given as batches, the even or odd batches. Two disjoint halves drawn alike from one split."""
    if is_array_split(split):
        inputs, labels = _split_batch(split, "eval")
        index = np.arange(parity, num_samples(inputs), 2)
        if len(index) == 0:
            raise EdgewiseError("eval has one sample: give at least two, or a validation split")
        return (take(inputs, index), labels[index]) if labels is not None else (take(inputs, index),)
    return _EveryOther(split, parity)
