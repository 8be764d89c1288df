"""Train a tiny RWKV-7 on text every machine has (the Python standard library's sources), saved in
the official x070 layout so that the reference `rwkv` package loads it too.

The model here is for training only: a differentiable batch-over-sequence form of the same math
as `reference.py`, its parameters named as the checkpoint keys.
"""

from __future__ import annotations

import math
import random
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgewise.files import atomic_path, cache_dir
from edgewise.measure.machine import cpu_flags
from edgewise.progress import progress_bar
from edgewise.rwkv.quant import NATIVE_BF16
from edgewise.rwkv.tokenizer import world_tokenizer

_MIX = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")


def default_model_path() -> Path:
    return cache_dir() / "rwkv" / "tiny-rwkv7-stdlib.pth"


def corpus(max_bytes: int = 6_000_000, seed: int = 0) -> str:
    """Python standard library sources (docstrings and code), in a fixed shuffled file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)
    random.Random(seed).shuffle(files)
    parts, size = [], 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    return "\n\n".join(parts)


def held_out_split(tokens: np.ndarray, fraction: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    cut = int(len(tokens) * (1 - fraction))
    return tokens[:cut], tokens[cut:]


class TinyRWKV7(nn.Module):
    """RWKV-7 for training: parameters named as checkpoint keys ('.' stored as '__')."""

    def __init__(self, vocab: int = 65536, width: int = 256, layers: int = 4, head_size: int = 64,
                 ranks: tuple[int, int, int, int] = (32, 32, 16, 64), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.vocab, self.width, self.layers, self.head_size = vocab, width, layers, head_size
        self.heads = width // head_size
        self.weights = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v) for k, v in
                                         _init(vocab, width, layers, head_size, ranks).items()})

    def w(self, key: str) -> torch.Tensor:
        return self.weights[key.replace(".", "__")]

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        return {k.replace("__", "."): v.detach().to(torch.bfloat16).contiguous() for k, v in self.weights.items()}

    def forward(self, tokens: torch.Tensor, output_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] for tokens [B, T], from the zero state; with `output_ids`, only
        those columns of the head (training on a corpus that uses a fraction of the vocabulary)."""
        C = self.width
        x = F.layer_norm(F.embedding(tokens, self.w("emb.weight")), (C,), self.w("blocks.0.ln0.weight"),
                         self.w("blocks.0.ln0.bias"))
        v_first = None
        for i in range(self.layers):
            dx, v_first = self._time_mix(i, x, v_first)
            x = x + dx
            x = x + self._channel_mix(i, x)
        x = F.layer_norm(x, (C,), self.w("ln_out.weight"), self.w("ln_out.bias"))
        head = self.w("head.weight")
        return x @ (head if output_ids is None else head[output_ids]).T

    def _time_mix(self, i: int, x: torch.Tensor, v_first):
        b, (B, T, C), H, N = f"blocks.{i}.att.", x.shape, self.heads, self.head_size
        w = lambda name: self.w(b + name)  # noqa: E731
        xa = F.layer_norm(x, (C,), self.w(f"blocks.{i}.ln1.weight"), self.w(f"blocks.{i}.ln1.bias"))
        d = F.pad(xa, (0, 0, 1, -1)) - xa                                      # previous token - this one
        xr, xw, xk, xv, xa_, xg = (xa + d * w(m).view(C) for m in _MIX)
        r, k, v = xr @ w("receptance.weight").T, xk @ w("key.weight").T, xv @ w("value.weight").T
        decay = torch.exp(-0.606531 * torch.sigmoid(w("w0").view(C) + torch.tanh(xw @ w("w1")) @ w("w2")))
        a = torch.sigmoid(w("a0").view(C) + (xa_ @ w("a1")) @ w("a2"))
        g = torch.sigmoid(xg @ w("g1")) @ w("g2")
        kk = F.normalize((k * w("k_k").view(C)).view(B, T, H, N), dim=-1).view(B, T, C)
        k = k * (1 + (a - 1) * w("k_a").view(C))
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(w("v0").view(C) + (xv @ w("v1")) @ w("v2"))
        y = _wkv_train(r.float(), decay.float(), k.float(), v.float(), kk.float(), a.float(), H, N)
        y = F.group_norm(y.reshape(B * T, C), H, w("ln_x.weight"), w("ln_x.bias"), eps=64e-5).view(B, T, C)
        y = y + ((r * k * w("r_k").reshape(C)).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N)).view(B, T, C)
        return (y * g) @ w("output.weight").T, v_first

    def _channel_mix(self, i: int, x: torch.Tensor) -> torch.Tensor:
        b, C = f"blocks.{i}.", self.width
        xf = F.layer_norm(x, (C,), self.w(b + "ln2.weight"), self.w(b + "ln2.bias"))
        mixed = xf + (F.pad(xf, (0, 0, 1, -1)) - xf) * self.w(b + "ffn.x_k").view(C)
        return torch.relu(mixed @ self.w(b + "ffn.key.weight").T) ** 2 @ self.w(b + "ffn.value.weight").T


def _wkv_train(r, w, k, v, kk, a, H: int, N: int) -> torch.Tensor:
    """The WKV-7 recurrence, differentiable: [B, T, C] inputs -> y [B, T, C]."""
    B, T, C = r.shape
    S = r.new_zeros(B, H, N, N)
    r_, w_, k_, v_ = (t.view(B, T, H, N) for t in (r, w, k, v))
    kk_, b_ = kk.view(B, T, H, N), (kk * a).view(B, T, H, N)
    ys = []
    for t in range(T):
        removed = (S @ kk_[:, t, :, :, None]) @ b_[:, t, :, None, :]
        S = S * w_[:, t, :, None, :] - removed + v_[:, t, :, :, None] @ k_[:, t, :, None, :]
        ys.append((S @ r_[:, t, :, :, None]).squeeze(-1))
    return torch.stack(ys, dim=1).reshape(B, T, C)


def _init(V: int, C: int, L: int, N: int, ranks: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
    """Initialisation after RWKV-LM's x070 (simplified): small embeddings, zero output projections."""
    H, F4 = C // N, 4 * C
    dw, da, dv, dg = ranks
    uniform = lambda *s, scale: (torch.rand(*s) * 2 - 1) * scale  # noqa: E731
    z = {"emb.weight": uniform(V, C, scale=1e-4), "blocks.0.ln0.weight": torch.ones(C),
         "blocks.0.ln0.bias": torch.zeros(C), "ln_out.weight": torch.ones(C), "ln_out.bias": torch.zeros(C),
         "head.weight": torch.randn(V, C) * 0.5 * C ** -0.5}
    position = torch.arange(C) / (C - 1)
    for i in range(L):
        b, depth = f"blocks.{i}.", i / max(1, L - 1)
        z.update({b + "ln1.weight": torch.ones(C), b + "ln1.bias": torch.zeros(C),
                  b + "ln2.weight": torch.ones(C), b + "ln2.bias": torch.zeros(C)})
        for m, power in zip(_MIX, (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)):
            z[b + "att." + m] = (1 - position ** (power * (1 - depth) + 0.1)).view(1, 1, C)
        z[b + "att.w0"] = (-7 + 5 * position ** (0.85 + depth ** 0.5) + 0.5).view(1, 1, C)
        for name, rank in (("w", dw), ("a", da), ("v", dv), ("g", dg)):
            z[f"{b}att.{name}1"] = torch.zeros(C, rank)
            z[f"{b}att.{name}2"] = torch.randn(rank, C) * 0.1
        z[b + "att.a0"], z[b + "att.v0"] = torch.zeros(1, 1, C), torch.ones(1, 1, C)
        z[b + "att.k_k"], z[b + "att.k_a"] = torch.full((1, 1, C), 0.85), torch.ones(1, 1, C)
        z[b + "att.r_k"] = torch.full((H, N), -0.04)
        for name in ("receptance", "key", "value"):
            z[f"{b}att.{name}.weight"] = uniform(C, C, scale=0.5 * C ** -0.5)
        z[b + "att.output.weight"] = torch.zeros(C, C)
        z[b + "att.ln_x.weight"] = torch.full((C,), ((1 + i) / L) ** 0.7)
        z[b + "att.ln_x.bias"] = torch.zeros(C)
        z[b + "ffn.x_k"] = (1 - position ** (1 - depth) ** 4).view(1, 1, C)
        z[b + "ffn.key.weight"] = uniform(F4, C, scale=0.5 * C ** -0.5)
        z[b + "ffn.value.weight"] = torch.zeros(C, F4)
    return z


def train(out: str | Path | None = None, minutes: float = 3.0, batch: int = 8, context: int = 128,
          lr: float = 2e-3, seed: int = 0, show_progress: bool = True) -> tuple[Path, dict]:
    """Train for about `minutes` and save the official-layout .pth. Returns the path and a summary
    with the held-out loss before and after."""
    out = Path(out) if out else default_model_path()
    tokens = np.asarray(world_tokenizer().encode(corpus()), dtype=np.int64)
    train_tokens, held = held_out_split(tokens)
    model = TinyRWKV7(seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    rng = np.random.default_rng(seed)
    used = torch.from_numpy(np.unique(train_tokens))          # the head rows the corpus can train
    position = torch.full((model.vocab,), -1, dtype=torch.long)
    position[used] = torch.arange(len(used))
    unseen = torch.from_numpy(np.setdiff1d(np.arange(model.vocab), used.numpy()))
    before = held_out_loss(model, held, context)
    # bf16 autocast only where the CPU multiplies bf16 natively: elsewhere it is emulated, and a
    # step took 8x as long as in fp32 (an AVX2-only Zen 3: 1 step against 8 in 24 s)
    bf16 = bool(NATIVE_BF16 & cpu_flags())
    deadline, steps = time.monotonic() + minutes * 60, 0
    with progress_bar(disable=not show_progress) as progress:
        bar = progress.add_task("training tiny RWKV-7", total=None, status="")
        while time.monotonic() < deadline:
            starts = rng.integers(0, len(train_tokens) - context - 1, batch)
            window = torch.from_numpy(np.stack([train_tokens[s:s + context + 1] for s in starts]))
            # The corpus's tokens plus a random sample of the others, so that tokens it never uses
            # are pushed down too (their logits would otherwise stay at their random start).
            outputs = torch.cat([used, unseen[torch.from_numpy(rng.choice(len(unseen), 4096, replace=False))]])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(window[:, :-1], outputs)
            loss = F.cross_entropy(logits.float().reshape(-1, len(outputs)), position[window[:, 1:]].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            steps += 1
            progress.update(bar, advance=1, status=f"step {steps} loss {loss.item():.3f}")
    after = held_out_loss(model, held, context)
    with atomic_path(out) as tmp:
        torch.save(model.official_state_dict(), tmp)
    return out, {"steps": steps, "bf16": bf16, "held_out_loss_before": before, "held_out_loss_after": after,
                 "train_tokens": len(train_tokens), "held_out_tokens": len(held)}


@torch.no_grad()
def held_out_loss(model: TinyRWKV7, held: np.ndarray, context: int, windows: int = 16) -> float:
    starts = np.linspace(0, len(held) - context - 1, windows).astype(int)
    window = torch.from_numpy(np.stack([held[s:s + context + 1] for s in starts]))
    logits = model(window[:, :-1])
    return float(F.cross_entropy(logits.reshape(-1, model.vocab), window[:, 1:].reshape(-1)))


def perplexity(logits_fn, tokens: np.ndarray) -> float:
    """exp(mean negative log-likelihood) of `tokens[1:]` given logits_fn(tokens[:-1]) -> [T, V]."""
    logits = torch.from_numpy(np.asarray(logits_fn(tokens[:-1].tolist()), dtype=np.float32))
    nll = F.cross_entropy(logits, torch.from_numpy(tokens[1:]).long())
    return math.exp(float(nll))
