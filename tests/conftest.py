import numpy as np
import pytest
import torch
from torch import nn

from edgewise.task import Task


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # Examples train into this cache once per test session, never into the user's cache.
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEWISE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def tiny_classifier(features: int = 6, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes)).eval()


@pytest.fixture
def tiny_task() -> Task:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    return Task(tiny_classifier(), train=(x, y), eval=(x[:40], y[:40]), metric="accuracy", name="tiny")


class TwoInputs(nn.Module):
    """A model with named inputs, like a tokenised text encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(8, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.proj(hidden.sum(1))
