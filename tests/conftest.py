import copy

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


class TinyResNet(nn.Module):
    """Two residual blocks: pruning must shrink both convs of a block and the skip together."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)) for _ in range(2))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean(dim=(2, 3)))


class TinyEncoder(nn.Module):
    """A stack of repeated blocks over [B, T, D] inputs: Linear layers export as MatMul."""

    def __init__(self, dim: int = 32, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.GELU()) for _ in range(depth))
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return self.out(x).mean(dim=1)


@pytest.fixture(scope="session")
def _trained_resnet() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(np.int64)
    torch.manual_seed(0)
    model = TinyResNet(classes=2)
    from edgewise.train import fit
    fit(model, (x[:120], y[:120]), epochs=8, lr=3e-3, show_progress=False)
    return model.eval(), x, y


@pytest.fixture
def image_task(_trained_resnet) -> Task:
    """Trained once per session; each test gets its own copy of the model to change."""
    model, x, y = _trained_resnet
    return Task(copy.deepcopy(model), train=(x[:120], y[:120]), calibration=(x[:64],), eval=(x[120:], y[120:]),
                name="resnet")


@pytest.fixture
def encoder_task() -> Task:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6, 32)).astype(np.float32)
    torch.manual_seed(0)
    return Task(TinyEncoder().eval(), train=(x[:64],), calibration=(x[:32],), eval=(x[64:],), metric="cosine",
                name="encoder")
