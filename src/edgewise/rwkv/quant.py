"""Weight matrices for the fast runtime: fp32, int8 per output channel, int4 group-wise.

Quantized matrices run on torch's CPU weight-only kernels (the ones torchao uses):
`_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu`, with bf16 activations.
"""

from __future__ import annotations

import torch

INT4_GROUP = 64


class Matrix:
    """W [out, in] applied to rows: x [T, in] -> [T, out] float32."""

    kind = "fp32"

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight.float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * 4

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {name: self.weight}


class Int8Matrix(Matrix):
    """Symmetric int8 per output channel: w = q * scale[out]."""

    kind = "int8"

    def __init__(self, weight: torch.Tensor | None = None, *, q: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> None:
        if weight is not None:
            weight = weight.float()
            scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
            q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.q, self.scale = q.contiguous(), scale.float()
        self._scale_bf16 = self.scale.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self._scale_bf16).float()

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.scale.numel() * 4

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.q8": self.q, f"{name}.scale": self.scale}


class Int4Matrix(Matrix):
    """Symmetric int4 in groups of INT4_GROUP inputs: w = (q - 8) * scale[out, group]."""

    kind = "int4"

    def __init__(self, weight: torch.Tensor | None = None, *, packed_bytes: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> None:
        if weight is not None:
            out_features, in_features = weight.shape
            groups = weight.float().reshape(out_features, in_features // INT4_GROUP, INT4_GROUP)
            scale = groups.abs().amax(dim=-1).clamp(min=1e-8) / 7.0                  # [out, groups]
            q = (torch.round(groups / scale[..., None]).clamp(-8, 7) + 8).to(torch.uint8).reshape(out_features, -1)
            packed_bytes = q[:, 0::2] | (q[:, 1::2] << 4)                              # [out, in/2]: portable
        self.packed_bytes, self.scale = packed_bytes.contiguous(), scale.float().contiguous()
        values = torch.stack([self.packed_bytes & 0xF, self.packed_bytes >> 4], dim=-1).reshape(len(self.scale), -1)
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values.to(torch.int32), 1)
        zeros = torch.zeros_like(self.scale)
        self._scales_zeros = torch.stack([self.scale, zeros], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self._packed, INT4_GROUP,
                                                          self._scales_zeros).float()

    @property
    def nbytes(self) -> int:
        return self.packed_bytes.numel() + self.scale.numel() * 4

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.q4": self.packed_bytes, f"{name}.scale": self.scale}


KINDS = {None: Matrix, "fp32": Matrix, "int8": Int8Matrix, "int4": Int4Matrix}


def quantize(weight: torch.Tensor, kind: str | None) -> Matrix:
    if kind == "int4" and (weight.shape[1] % INT4_GROUP or weight.shape[0] % 16):
        return Int8Matrix(weight)  # the int4 kernel needs outputs % 16 and inputs % group: int8 instead
    return KINDS[kind](weight)


def from_tensors(tensors: dict[str, torch.Tensor], name: str) -> Matrix:
    """A matrix saved by `Matrix.tensors(name)` (a converted file)."""
    if f"{name}.q8" in tensors:
        return Int8Matrix(q=tensors[f"{name}.q8"], scale=tensors[f"{name}.scale"])
    if f"{name}.q4" in tensors:
        return Int4Matrix(packed_bytes=tensors[f"{name}.q4"], scale=tensors[f"{name}.scale"])
    return Matrix(tensors[name])
