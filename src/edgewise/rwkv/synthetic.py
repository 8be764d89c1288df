"""Random-weight RWKV-7 checkpoints in the official layout, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch


def random_checkpoint(path: Path, layers: int = 2, width: int = 128, head_size: int = 64, vocab: int = 300,
                      ranks: tuple[int, int, int, int] = (16, 16, 8, 32), seed: int = 0,
                      v_dummies: bool = True) -> Path:
    """A flat dict of bf16 tensors named and shaped like a released x070 .pth."""
    g = torch.Generator().manual_seed(seed)
    C, H, N, F = width, width // head_size, head_size, 4 * width
    dw, da, dv, dg = ranks

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)

    def unit(*shape):
        return torch.rand(*shape, generator=g).to(torch.bfloat16)

    z = {"emb.weight": rand(vocab, C, scale=1.0), "blocks.0.ln0.weight": 1 + rand(C, scale=0.1),
         "blocks.0.ln0.bias": rand(C, scale=0.1), "ln_out.weight": 1 + rand(C, scale=0.1),
         "ln_out.bias": rand(C, scale=0.1), "head.weight": rand(vocab, C, scale=C ** -0.5)}
    for i in range(layers):
        b = f"blocks.{i}."
        z.update({b + "ln1.weight": 1 + rand(C, scale=0.1), b + "ln1.bias": rand(C, scale=0.1),
                  b + "ln2.weight": 1 + rand(C, scale=0.1), b + "ln2.bias": rand(C, scale=0.1)})
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            z[b + "att." + name] = unit(1, 1, C)
        z[b + "att.w0"] = rand(1, 1, C, scale=0.5) - 1.0
        z[b + "att.w1"], z[b + "att.w2"] = rand(C, dw, scale=0.1), rand(dw, C, scale=0.1)
        z[b + "att.a0"] = rand(1, 1, C, scale=0.5)
        z[b + "att.a1"], z[b + "att.a2"] = rand(C, da, scale=0.1), rand(da, C, scale=0.1)
        if i > 0 or v_dummies:
            z[b + "att.v0"] = rand(1, 1, C, scale=0.5) + 1.0
            z[b + "att.v1"], z[b + "att.v2"] = rand(C, dv, scale=0.1), rand(dv, C, scale=0.1)
        z[b + "att.g1"], z[b + "att.g2"] = rand(C, dg, scale=0.1), rand(dg, C, scale=0.1)
        z[b + "att.k_k"], z[b + "att.k_a"] = 0.8 + rand(1, 1, C, scale=0.1), unit(1, 1, C)
        z[b + "att.r_k"] = rand(H, N, scale=0.1)
        for name in ("receptance", "key", "value", "output"):
            z[f"{b}att.{name}.weight"] = rand(C, C, scale=C ** -0.5)
        z[b + "att.ln_x.weight"], z[b + "att.ln_x.bias"] = 1 + rand(C, scale=0.1), rand(C, scale=0.1)
        z[b + "ffn.x_k"] = unit(1, 1, C)
        z[b + "ffn.key.weight"] = rand(F, C, scale=C ** -0.5)
        z[b + "ffn.value.weight"] = rand(C, F, scale=F ** -0.5)
    torch.save(z, path)
    return path
