"""Weight matrices for the fast runtime: fp32, int8 per output channel, int4 group-wise.

Quantized matrices run on torch's CPU weight-only kernels (the ones torchao uses):
`_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu`, with bf16 activations.
"""

from __future__ import annotations

import torch

INT4_GROUP = 64
# Above this many rows (a prefill), dequantizing to bf16 and running oneDNN's bf16 GEMM beats the
# weight-only kernels, which are built for decode (measured 2.4x at 512 rows on this machine).
DEQUANTIZE_ROWS = 16


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.bfloat16 else x.to(torch.bfloat16)


def int8_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (q [R, C] int8, scale [R]) with rows ~= q * scale[:, None]."""
    rows = rows.float()
    scale = rows.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    return torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


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
        if weight is not None:  # row chunks: no full fp32 copy of a large (bf16) matrix at once
            q = torch.empty(weight.shape, dtype=torch.int8)
            scale = torch.empty(weight.shape[0])
            for start in range(0, weight.shape[0], 8192):
                q[start:start + 8192], scale[start:start + 8192] = int8_rows(weight[start:start + 8192])
        self.q, self.scale = q.contiguous(), scale.float()
        self._scale_bf16 = self.scale.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > DEQUANTIZE_ROWS:
            return (_bf16(x) @ (self.q.to(torch.bfloat16) * self._scale_bf16[:, None]).T).float()
        return torch.ops.aten._weight_int8pack_mm(_bf16(x), self.q, self._scale_bf16).float()

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.scale.numel() * 4

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.q8": self.q, f"{name}.scale": self.scale}


class Int4Matrix(Matrix):
    """Symmetric int4 in groups of INT4_GROUP inputs: w = (q - 8) * scale[out, group]."""

    kind = "int4"

    def __init__(self, weight: torch.Tensor | None = None, *, packed_bytes: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None, kernel_packed: torch.Tensor | None = None) -> None:
        if weight is not None:  # row chunks, as for int8
            out_features, in_features = weight.shape
            packed_bytes = torch.empty(out_features, in_features // 2, dtype=torch.uint8)
            scale = torch.empty(out_features, in_features // INT4_GROUP)
            for start in range(0, out_features, 8192):
                groups = weight[start:start + 8192].float().reshape(-1, in_features // INT4_GROUP, INT4_GROUP)
                scale[start:start + 8192] = groups.abs().amax(dim=-1).clamp(min=1e-8) / 7.0  # [out, groups]
                q = (torch.round(groups / scale[start:start + 8192, :, None]).clamp(-8, 7) + 8).to(torch.uint8)
                q = q.reshape(len(groups), -1)
                packed_bytes[start:start + 8192] = q[:, 0::2] | (q[:, 1::2] << 4)      # [out, in/2]: portable
        self.packed_bytes, self.scale = packed_bytes.contiguous(), scale.float().contiguous()
        zeros = torch.zeros_like(self.scale)
        self._scales_zeros = torch.stack([self.scale, zeros], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        self._packed = kernel_packed
        if kernel_packed is None:
            self._pack()

    def _pack(self) -> None:
        # The kernel's layout, built 1024 rows at a time (its packing works in blocks of 64 rows),
        # so that no int32 copy of a large matrix exists at once.
        self._packed = None
        for start in range(0, len(self.packed_bytes), 1024):
            rows = self.packed_bytes[start:start + 1024]
            part = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                torch.stack([rows & 0xF, rows >> 4], dim=-1).reshape(len(rows), -1).to(torch.int32), 1)
            if self._packed is None:
                self._packed = torch.empty((len(self.packed_bytes), *part.shape[1:]), dtype=part.dtype)
            self._packed[start:start + len(rows)] = part

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # One kernel for decode and prefill (at 256 rows it is 1.5x slower than dequantizing, but
        # never touches the portable bytes, which then need not stay in memory).
        return torch.ops.aten._weight_int4pack_mm_for_cpu(_bf16(x), self._packed, INT4_GROUP,
                                                          self._scales_zeros).float()

    @property
    def nbytes(self) -> int:
        return self.packed_bytes.numel() + self.scale.numel() * 4

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        # Portable nibbles, and the kernel's own layout (valid for this torch version) so that a
        # converted file is used in place without repacking.
        return {f"{name}.q4": self.packed_bytes, f"{name}.scale": self.scale, f"{name}.q4kernel": self._packed}


KINDS = {None: Matrix, "fp32": Matrix, "int8": Int8Matrix, "int4": Int4Matrix}


def quantize(weight: torch.Tensor, kind: str | None) -> Matrix:
    if kind == "int4" and (weight.shape[1] % INT4_GROUP or weight.shape[0] % 64):
        return Int8Matrix(weight)  # the int4 kernel packs outputs in blocks of 64 and inputs by group: int8
    return KINDS[kind](weight)


def from_tensors(tensors: dict[str, torch.Tensor], name: str, same_torch: bool = True) -> Matrix:
    """A matrix saved by `Matrix.tensors(name)` (a converted file). The int4 kernel layout is
    reused only when the file was written by this torch version; otherwise it is rebuilt."""
    if f"{name}.q8" in tensors:
        return Int8Matrix(q=tensors[f"{name}.q8"], scale=tensors[f"{name}.scale"])
    if f"{name}.q4" in tensors:
        kernel = tensors.get(f"{name}.q4kernel") if same_torch else None
        return Int4Matrix(packed_bytes=tensors[f"{name}.q4"], scale=tensors[f"{name}.scale"], kernel_packed=kernel)
    return Matrix(tensors[name])


class Embedding:
    """The LN0-folded embedding table: fp32, or int8 per row (a quarter of the memory) when the
    model is quantized. Only looked up, one row per token."""

    def __init__(self, table: torch.Tensor | None = None, *, q: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> None:
        self.table = table if q is None else None
        self.q, self.scale = q, scale

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table[tokens].float()
        return self.q[tokens].float() * self.scale[tokens, None]

    @property
    def row_bytes(self) -> int:
        return self.table.shape[1] * 4 if self.table is not None else self.q.shape[1] + 4

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"emb.folded": self.table} if self.table is not None else {"emb.q8": self.q, "emb.scale": self.scale}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "Embedding":
        if "emb.folded" in tensors:
            return cls(tensors["emb.folded"])
        return cls(q=tensors["emb.q8"], scale=tensors["emb.scale"])


def fold_embedding(emb: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, quantized: bool,
                   rows: int = 8192) -> Embedding:
    """LN0 applied to every row once, in chunks (no full fp32 copy of a bf16 table at once)."""
    folded = torch.empty(emb.shape, dtype=torch.float32) if not quantized else None
    q = torch.empty(emb.shape, dtype=torch.int8) if quantized else None
    scale = torch.empty(emb.shape[0]) if quantized else None
    for start in range(0, emb.shape[0], rows):
        part = torch.nn.functional.layer_norm(emb[start:start + rows].float(), (emb.shape[1],), weight, bias)
        if quantized:
            q[start:start + rows], scale[start:start + rows] = int8_rows(part)
        else:
            folded[start:start + rows] = part
    return Embedding(folded) if not quantized else Embedding(q=q, scale=scale)
