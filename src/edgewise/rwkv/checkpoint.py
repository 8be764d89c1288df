"""Official RWKV-7 checkpoints: a flat {name: tensor} dict (.pth, bf16) or safetensors.

Every dimension is read from tensor shapes. Nothing is unpickled but tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from edgewise.errors import EdgewiseError
from edgewise.runtime.torch import load_weights

# Large matrices, applied as W @ x with W [out, in]: what int8/int4 quantize.
MATRICES = ("att.receptance.weight", "att.key.weight", "att.value.weight", "att.output.weight",
            "ffn.key.weight", "ffn.value.weight")


@dataclass(frozen=True)
class Dims:
    layers: int
    width: int        # C
    heads: int        # H
    head_size: int    # N
    vocab: int        # V
    ffn: int          # hidden width of the channel mix (4C in released models)


def version_of(weights: dict) -> str:
    keys = set(weights)
    if "blocks.0.att.r_k" in keys and "blocks.0.att.k_a" in keys:
        return "x070"
    if any(".att.time_maa" in k for k in keys):
        return "x060"
    if "blocks.0.att.ln_x.weight" in keys:
        return "x050"
    if "emb.weight" in keys and "head.weight" in keys:
        return "an older RWKV (v4 or earlier)"
    return "not RWKV"


def dims_of(weights: dict, path: str | Path = "checkpoint") -> Dims:
    """Dimensions from shapes, after checking the version and every tensor's shape (reshaped in
    place to its canonical shape)."""
    version = version_of(weights)
    if version == "not RWKV":
        raise EdgewiseError(f"{path}: not an RWKV checkpoint (no emb.weight/head.weight); give an RWKV-7 .pth")
    if version != "x070":
        raise EdgewiseError(f"{path}: an RWKV {version} checkpoint; edgewise runs RWKV-7 (x070) only")
    vocab, width = _shape(weights, "emb.weight", path, ndim=2)
    heads, head_size = _shape(weights, "blocks.0.att.r_k", path, ndim=2)
    numbers = {k.split(".")[1] for k in weights if k.startswith("blocks.")}
    if not all(n.isdigit() for n in numbers):
        raise EdgewiseError(f"{path}: tensor names blocks.{sorted(n for n in numbers if not n.isdigit())[0]}... "
                            "have no layer number; the checkpoint is damaged")
    layers = 1 + max(int(n) for n in numbers)
    ffn = _shape(weights, "blocks.0.ffn.key.weight", path, ndim=2)[0]
    dims = Dims(layers, width, heads, head_size, vocab, ffn)
    if heads * head_size != width:
        raise EdgewiseError(f"{path}: r_k is [{heads}, {head_size}] but the width is {width}; the file is damaged")
    _check_shapes(weights, dims, path)
    return dims


def _shape(weights: dict, key: str, path, ndim: int | None = None) -> tuple[int, ...]:
    if key not in weights:
        raise EdgewiseError(f"{path}: missing tensor {key}; the checkpoint is incomplete")
    shape = tuple(weights[key].shape)
    if ndim is not None and len(shape) != ndim:
        raise EdgewiseError(f"{path}: {key} has shape {list(shape)}, expected {ndim} dimensions")
    return shape


def _check_shapes(weights: dict, dims: Dims, path) -> None:
    """Check every tensor the runtime reads against `dims`, and reshape it in place to its
    canonical shape (released checkpoints store vectors as [1, 1, C])."""
    C, V, F = dims.width, dims.vocab, dims.ffn
    expected = {"emb.weight": (V, C), "head.weight": (V, C), "ln_out.weight": (C,), "ln_out.bias": (C,),
                "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,)}
    for i in range(dims.layers):
        b = f"blocks.{i}."
        expected.update({b + "att.receptance.weight": (C, C), b + "att.key.weight": (C, C),
                         b + "att.value.weight": (C, C), b + "att.output.weight": (C, C),
                         b + "ffn.key.weight": (F, C), b + "ffn.value.weight": (C, F),
                         b + "att.r_k": (dims.heads, dims.head_size)})
        for name in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.ln_x.weight", "att.ln_x.bias",
                     "att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g", "att.w0", "att.a0",
                     "att.k_k", "att.k_a", "ffn.x_k") + (("att.v0",) if i > 0 else ()):
            expected[b + name] = (C,)
        for lora in ("w", "a", "g") + (("v",) if i > 0 else ()):
            rank = _shape(weights, f"{b}att.{lora}1", path, ndim=2)[1]
            if not 0 < rank <= C:
                raise EdgewiseError(f"{path}: {b}att.{lora}1 has rank {rank}; the file is damaged")
            expected[f"{b}att.{lora}1"] = (C, rank)
            expected[f"{b}att.{lora}2"] = (rank, C)
    for key, shape in expected.items():
        got = tuple(_shape(weights, key, path))
        if tuple(d for d in got if d != 1) != tuple(d for d in shape if d != 1):
            raise EdgewiseError(f"{path}: {key} has shape {list(got)}, expected {list(shape)}; the file is damaged")
        if not weights[key].is_floating_point():
            raise EdgewiseError(f"{path}: {key} holds {weights[key].dtype}, not floating point; the file is damaged")
        weights[key] = weights[key].reshape(shape)


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], Dims]:
    """The tensors of a .pth (weights only, memory-mapped) or .safetensors checkpoint, and its Dims."""
    weights = load_weights(path)
    return weights, dims_of(weights, path)
