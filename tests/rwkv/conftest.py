import os

import numpy as np
import pytest

from edgewise.rwkv.synthetic import random_checkpoint

SHAPES = {  # two different model shapes, LoRA ranks differing as between released models
    "small": dict(layers=2, width=128, head_size=64, vocab=320, ranks=(16, 16, 8, 32)),
    "other": dict(layers=3, width=192, head_size=64, vocab=512, ranks=(32, 24, 16, 48), v_dummies=False),
}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rwkv")
    return {name: random_checkpoint(folder / f"{name}.pth", seed=i, **shape) for i, (name, shape) in enumerate(SHAPES.items())}


@pytest.fixture(scope="session")
def world_checkpoint(tmp_path_factory):
    """Vocabulary of the World tokenizer, for generation tests."""
    return random_checkpoint(tmp_path_factory.mktemp("rwkv-world") / "world.pth", layers=2, width=128, vocab=65536)


def reference_package(path):
    os.environ["RWKV_V7_ON"] = "1"
    os.environ.setdefault("RWKV_JIT_ON", "0")
    from rwkv.model import RWKV as Reference
    return Reference(model=str(path)[: -len(".pth")], strategy="cpu fp32")


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
