"""Checks on a converted file (written by `RWKV.save`) before any kernel sees its tensors.

The C decode step sizes its buffers from the model's dimensions: a header that disagrees with
the tensors (an edited or damaged file) would make it write past them. Every dimension is read
from the tensors, compared with the header, and every tensor's shape and dtype is checked.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgewise.errors import EdgewiseError
from edgewise.rwkv.checkpoint import MATRICES, Dims
from edgewise.rwkv.quant import INT4_GROUP

_VECTORS = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.w0", "att.a0", "att.k_k", "att.k_a", "att.r_k",
            "att.ln_x.weight", "att.ln_x.bias", "ffn.x_k", "att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a",
            "att.x_g")
_LORAS = ("w", "a", "g", "v")   # att.{lora}1 [C, rank] and att.{lora}2 [rank, C]; v from layer 1 on
_FLOATS = (torch.float32, torch.bfloat16)
CONVERTED_FORMAT = "edgewise-rwkv7"  # key of the header tensor: [layers, width, heads, head_size, vocab, ffn, bits, version]


def _damaged(path: Path, what: str) -> EdgewiseError:
    return EdgewiseError(f"{path}: {what}; the converted file is damaged: convert the original checkpoint again")


def _tensor(tensors: dict, key: str, path: Path, shape: tuple[int, ...], dtypes: tuple) -> torch.Tensor:
    if key not in tensors:
        raise _damaged(path, f"tensor {key} is missing")
    tensor = tensors[key]
    if tuple(tensor.shape) != shape or tensor.dtype not in dtypes:
        raise _damaged(path, f"{key} is {list(tensor.shape)} {tensor.dtype}, expected {list(shape)} "
                             f"{' or '.join(str(d) for d in dtypes)}")
    return tensor


def _rows(tensors: dict, name: str, path: Path) -> int:
    for key in (name, f"{name}.q8", f"{name}.q4"):
        if key in tensors and tensors[key].dim() == 2:
            return int(tensors[key].shape[0])
    raise _damaged(path, f"matrix {name} is missing")


def _matrix(tensors: dict, name: str, path: Path, out: int, inputs: int) -> None:
    """A matrix in any of the forms `Matrix.tensors` writes: fp32, int8 per row, int4 per group."""
    if f"{name}.q8" in tensors:
        _tensor(tensors, f"{name}.q8", path, (out, inputs), (torch.int8,))
        _tensor(tensors, f"{name}.scale", path, (out,), (torch.float32,))
    elif f"{name}.q4" in tensors:
        if inputs % INT4_GROUP:
            raise _damaged(path, f"{name} is int4 with {inputs} inputs, not a multiple of {INT4_GROUP}")
        _tensor(tensors, f"{name}.q4", path, (out, inputs // 2), (torch.uint8,))
        _tensor(tensors, f"{name}.scale", path, (out, inputs // INT4_GROUP), (torch.float32,))
    else:
        _tensor(tensors, name, path, (out, inputs), (torch.float32,))


def _layers(tensors: dict, path: Path) -> int:
    indices = set()
    for key in tensors:
        if key.startswith("blocks."):
            index = key.split(".")[1]
            if not index.isdigit():
                raise _damaged(path, f"tensor {key} has no layer number")
            indices.add(int(index))
    if not indices or indices != set(range(len(indices))):
        raise _damaged(path, f"layers {sorted(indices)[:8]} are not 0..n-1")
    return len(indices)


def read_header(tensors: dict, path: Path) -> list[int]:
    """[layers, width, heads, head_size, vocab, ffn, bits, version]; version is absent in the oldest files."""
    header = tensors[CONVERTED_FORMAT]
    if header.dim() != 1 or header.dtype != torch.int64 or len(header) not in (7, 8) or int(header[6]) not in (0, 4, 8):
        raise _damaged(path, f"the header is {list(header.shape)} {header.dtype}, expected 8 int64 values "
                             "with 0, 4 or 8 bits")
    return [int(v) for v in header.tolist()]


def check(tensors: dict, path: Path) -> Dims:
    """The model's dimensions, read from its tensors and checked against the header and every tensor.

    Only the head count is not in any tensor's shape (r_k is stored flat): it must divide the
    width, and the head size it implies must be the header's."""
    header = read_header(tensors, path)
    ln_out = tensors.get("ln_out.weight")
    if ln_out is None or ln_out.dim() != 1 or len(ln_out) == 0:
        raise _damaged(path, "ln_out.weight is missing or not a vector")
    width, heads = len(ln_out), int(header[2])
    if heads < 1 or width % heads:
        raise _damaged(path, f"the header's {heads} heads do not divide the width {width}")
    dims = Dims(_layers(tensors, path), width, heads, width // heads, _rows(tensors, "head.weight", path),
                _rows(tensors, "blocks.0.ffn.key.weight", path))
    if tuple(header[:6]) != tuple(vars(dims).values()):
        raise _damaged(path, f"the header says {header[:6]} (layers, width, heads, head size, vocab, ffn) "
                             f"but the tensors say {list(vars(dims).values())}")
    _check_all(tensors, dims, path)
    return dims


def _check_all(tensors: dict, dims: Dims, path: Path) -> None:
    C, V, F = dims.width, dims.vocab, dims.ffn
    if "emb.folded" in tensors:
        _tensor(tensors, "emb.folded", path, (V, C), (torch.float32,))
    else:
        _tensor(tensors, "emb.q8", path, (V, C), (torch.int8,))
        _tensor(tensors, "emb.scale", path, (V,), (torch.float32,))
    for name in ("ln_out.weight", "ln_out.bias"):
        _tensor(tensors, name, path, (C,), _FLOATS)
    _matrix(tensors, "head.weight", path, V, C)
    for i in range(dims.layers):
        b = f"blocks.{i}."
        for name in _VECTORS:
            _tensor(tensors, b + name, path, (C,), _FLOATS)
        for lora in _LORAS[:3] + (_LORAS[3:] if i > 0 else ()):
            down = tensors.get(f"{b}att.{lora}1")
            if down is None or down.dim() != 2 or down.shape[1] < 1:
                raise _damaged(path, f"{b}att.{lora}1 is missing or not a matrix")
            rank = int(down.shape[1])
            _tensor(tensors, f"{b}att.{lora}1", path, (C, rank), _FLOATS)
            _tensor(tensors, f"{b}att.{lora}2", path, (rank, C), _FLOATS)
        if i > 0:
            _tensor(tensors, b + "att.v0", path, (C,), _FLOATS)
        shapes = {"att.receptance.weight": (C, C), "att.key.weight": (C, C), "att.value.weight": (C, C),
                  "att.output.weight": (C, C), "ffn.key.weight": (F, C), "ffn.value.weight": (C, F)}
        for name in MATRICES:
            _matrix(tensors, b + name, path, *shapes[name])
