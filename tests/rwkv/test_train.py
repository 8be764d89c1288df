import numpy as np
import torch

from edgewise.rwkv import RWKV
from edgewise.rwkv.train import TinyRWKV7, held_out_split, perplexity
from tests.rwkv.conftest import reference_package, relative_error


def test_training_model_agrees_with_the_runtime_and_the_rwkv_package(tmp_path):
    model = TinyRWKV7(vocab=512, width=128, layers=2, ranks=(16, 16, 8, 32))
    with torch.no_grad():  # move off the zero init so that every path matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path / "tiny.pth"
    torch.save(model.official_state_dict(), path)
    tokens = [1, 7, 300, 2, 45, 9]
    with torch.no_grad():
        trained_view = model(torch.tensor([tokens]))[0, -1].numpy()
    runtime = RWKV.load(path).forward(tokens, use_cache=False)[0]
    theirs = reference_package(path).forward(tokens, None)[0].float().numpy()
    assert relative_error(runtime, theirs) < 1e-4
    assert relative_error(trained_view, runtime) < 2e-2  # bf16 checkpoint vs fp32 training weights


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = TinyRWKV7(vocab=64, width=64, layers=1, ranks=(8, 8, 8, 8))
    data = torch.tensor([[i % 7 for i in range(33)]] * 4)  # a periodic sequence
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(data[:, :-1]).reshape(-1, 64), data[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_perplexity_and_split():
    train, held = held_out_split(np.arange(100), 0.1)
    assert len(train) == 90 and held[0] == 90
    uniform = perplexity(lambda tokens: np.zeros((len(tokens), 50), np.float32), np.arange(20) % 50)
    assert abs(uniform - 50) < 1e-3
