"""Built-in example tasks, loaded by name: `load_example("digits")`."""

from __future__ import annotations

from collections.abc import Callable

from edgewise.errors import EdgewiseError
from edgewise.task import Task


def _digits() -> Task:
    from edgewise.examples.digits import load
    return load()


def _breast_cancer() -> Task:
    from edgewise.examples.breast_cancer import load
    return load()


def _minilm() -> Task:
    from edgewise.examples.minilm import load
    return load()


EXAMPLES: dict[str, Callable[[], Task]] = {
    "digits": _digits,
    "breast-cancer": _breast_cancer,
    "minilm": _minilm,
}


def load_example(name: str) -> Task:
    """The built-in task `name`: digits (CNN), breast-cancer (MLP) or minilm (sentence encoder)."""
    if name not in EXAMPLES:
        raise EdgewiseError(f"unknown example {name!r}: choose one of {', '.join(EXAMPLES)}")
    return EXAMPLES[name]()
