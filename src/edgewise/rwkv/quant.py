"""Weight matrices for the fast runtime: fp32, int8 per output channel, int4 group-wise.

Decode and short prompts run quantized matrices on edgewise's own kernels (`_decode.c`, through
`native`): fp32 activations, except int8 activations (per group of 64) for int4 matrices. Long
prompts take whichever of three GEMMs `prefill_gemm` measured fastest on this CPU: int8 activations
x int8/int4 weights in C (AVX2 maddubs), or tiles of dequantized rows through torch's GEMM in fp32
or bf16 (bf16 only pays where the CPU has native bf16 dot products; elsewhere it is emulated).
Without the compiled kernels, torch's CPU weight-only kernels serve (the ones torchao uses:
`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`).
"""

from __future__ import annotations

import abc
import functools
import time

import torch

from edgewise.rwkv import native

INT4_GROUP = 64
# Above this many rows (a prefill) a GEMM beats the matrix-vector kernels, which are built for decode
# (measured 2.4x at 512 rows).
DEQUANTIZE_ROWS = 16
TILE = 4096   # output rows dequantized at a time: no copy of a whole (head) matrix at prefill
# bf16 dot products in hardware, as /proc/cpuinfo names them (x86 AVX512-BF16 and AMX; Arm BF16)
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
GEMMS = ("int8", "fp32", "bf16")   # int8 activations in C; dequantized tiles through torch in fp32 or bf16
_GEMM_NAMES = {"int8": "int8 activations x {kind} weights (C)", "fp32": "fp32 on dequantized tiles",
               "bf16": "bf16 on dequantized tiles"}


@functools.cache
def prefill_gemm(kind: str = "int8") -> tuple[str, str]:
    """How a prefill multiplies `kind` ("int8" | "int4") matrices, one of GEMMS, and why: each GEMM
    timed once on this CPU on a 0.1B model's FFN shapes (128 tokens), the fastest kept."""
    g = torch.Generator().manual_seed(0)
    shapes = ((3072, 768), (768, 3072))   # [out, in]: the FFN's key and value
    matrices = [KINDS[kind](torch.randn(rows, cols, generator=g) * cols ** -0.5) for rows, cols in shapes]
    inputs = [torch.randn(128, cols, generator=g) for _, cols in shapes]
    seconds = {}
    lib = native.library()
    for gemm in GEMMS if lib is not None and lib.ew_gemm_q8_simd() else GEMMS[1:]:
        def run() -> None:
            for matrix, x in zip(matrices, inputs):
                matrix.prefill(x, gemm)
        run()   # warm-up: oneDNN picks and caches its kernel
        seconds[gemm] = min(_seconds(run) for _ in range(3))
    chosen = min(seconds, key=seconds.get)
    has = sorted(NATIVE_BF16 & native.cpu_flags())
    hardware = f"has native bf16 dot products ({', '.join(has)})" if has else "has no native bf16 dot products"
    others = ", ".join(f"{seconds[other] / seconds[chosen]:.1f}x faster than {other}" for other in seconds if other != chosen)
    return chosen, f"{_GEMM_NAMES[chosen].format(kind=kind)}: measured {others} here; the CPU {hardware}"


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
        return x.float() @ self.weight.T

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * 4

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {name: self.weight}


class _Quantized(Matrix, abc.ABC):
    """A few rows go through the C kernels when they are built, else through `_torch_kernel`."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > DEQUANTIZE_ROWS:
            return self.prefill(x, prefill_gemm(self.kind)[0])
        lib = native.library()
        if lib is None:
            return self._torch_kernel(x)
        if x.shape[0] > 1 and lib.ew_gemm_q8_simd() and self._view().cols % INT4_GROUP == 0:
            # a few rows (a short prompt, or one token of each of several streams): the int8 GEMM reads
            # each weight once for all of them; measured at or below the matrix-vector kernels' cost
            # from 2 rows on (AVX2, Zen 3: 8 rows 2.6-3.9x one row, against 5.8-7.6x)
            return native.matmul(lib, self._view(), x, int8_activations=True)
        return native.matmul(lib, self._view(), x)

    def prefill(self, x: torch.Tensor, gemm: str) -> torch.Tensor:
        """x [T, in] -> [T, out] float32 through one of GEMMS (int8 and C dequantization need the kernels)."""
        lib = native.library()
        if gemm == "int8" and lib is not None and self._view().cols % INT4_GROUP == 0:
            return native.matmul(lib, self._view(), x, int8_activations=True)
        dtype = torch.bfloat16 if gemm == "bf16" else torch.float32
        rows = self.scale.shape[0]
        x, y = x.to(dtype), torch.empty(x.shape[0], rows)
        for start in range(0, rows, TILE):
            tile = range(start, min(start + TILE, rows))
            if lib is not None and dtype == torch.float32:   # one pass in C
                weights = native.dequantize(lib, self._view(), tile)
            else:
                weights = self.dequantized(slice(tile.start, tile.stop), dtype)
            y[:, tile.start:tile.stop] = x @ weights.T
        return y

    def _view(self) -> native.Matrix:
        """The C view of this matrix, made once; the tensors it points to are kept with it."""
        if getattr(self, "_native", None) is None:
            self._keep: list[torch.Tensor] = []
            self._native = native.describe(self, self._keep)
        return self._native

    @abc.abstractmethod
    def dequantized(self, rows: slice = slice(None), dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """The weights of `rows` as [rows, in] of `dtype`, for long prompts."""

    @abc.abstractmethod
    def _torch_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, in] -> [T, out] float32 on torch's weight-only kernel (no C compiler)."""


class Int8Matrix(_Quantized):
    """Symmetric int8 per output channel: w = q * scale[out]."""

    kind = "int8"

    def __init__(self, weight: torch.Tensor | None = None, *, q: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> None:
        if weight is not None:  # row chunks: no full fp32 copy of a large (bf16) matrix at once
            q = torch.empty(weight.shape, dtype=torch.int8)
            scale = torch.empty(weight.shape[0])
            for start in range(0, weight.shape[0], 8192):
                q[start:start + 8192], scale[start:start + 8192] = int8_rows(weight[start:start + 8192])
        self.q, self.scale = q.contiguous(), scale.float().contiguous()

    def dequantized(self, rows: slice = slice(None), dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return self.q[rows].to(dtype) * self.scale[rows].to(dtype)[:, None]

    def _torch_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(_bf16(x), self.q, self.scale.to(torch.bfloat16)).float()

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.scale.numel() * 4

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.q8": self.q, f"{name}.scale": self.scale}


class Int4Matrix(_Quantized):
    """Symmetric int4 in groups of INT4_GROUP inputs: w = (q - 8) * scale[out, group]. Two
    inputs per byte: byte j of a group holds input j (low nibble) and input j + 32 (high), so
    a kernel unpacks a group into two runs of consecutive inputs."""

    kind = "int4"

    def __init__(self, weight: torch.Tensor | None = None, *, packed_bytes: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> None:
        if weight is not None:  # row chunks, as for int8
            out_features, in_features = weight.shape
            packed_bytes = torch.empty(out_features, in_features // 2, dtype=torch.uint8)
            scale = torch.empty(out_features, in_features // INT4_GROUP)
            for start in range(0, out_features, 8192):
                groups = weight[start:start + 8192].float().reshape(-1, in_features // INT4_GROUP, INT4_GROUP)
                scale[start:start + 8192] = groups.abs().amax(dim=-1).clamp(min=1e-8) / 7.0  # [out, groups]
                q = (torch.round(groups / scale[start:start + 8192, :, None]).clamp(-8, 7) + 8).to(torch.uint8)
                half = INT4_GROUP // 2
                packed_bytes[start:start + 8192] = (q[..., :half] | (q[..., half:] << 4)).reshape(len(q), -1)
        self.packed_bytes, self.scale = packed_bytes.contiguous(), scale.float().contiguous()
        self._torch_packed = None

    def unpacked(self, rows: slice = slice(None)) -> torch.Tensor:
        """q in 0..15, [rows, in] uint8."""
        part = self.packed_bytes[rows]
        grouped = part.reshape(len(part), -1, INT4_GROUP // 2)
        return torch.cat([grouped & 0xF, grouped >> 4], dim=-1).reshape(len(part), -1)

    def dequantized(self, rows: slice = slice(None), dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        q = self.unpacked(rows).reshape(-1, self.scale.shape[1], INT4_GROUP).to(dtype) - 8
        return (q * self.scale[rows, :, None].to(dtype)).reshape(len(q), -1)

    def _torch_kernel(self, x: torch.Tensor) -> torch.Tensor:
        if self._torch_packed is None:  # torch's layout, built 1024 rows at a time (it packs 64-row blocks)
            parts = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.unpacked(slice(s, s + 1024)).to(torch.int32), 1)
                     for s in range(0, len(self.packed_bytes), 1024)]
            zeros = torch.zeros_like(self.scale)
            self._scales_zeros = torch.stack([self.scale, zeros], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
            self._torch_packed = torch.cat(parts)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(_bf16(x), self._torch_packed, INT4_GROUP,
                                                          self._scales_zeros).float()

    @property
    def nbytes(self) -> int:
        return self.packed_bytes.numel() + self.scale.numel() * 4

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.q4": self.packed_bytes, f"{name}.scale": self.scale}


KINDS = {None: Matrix, "fp32": Matrix, "int8": Int8Matrix, "int4": Int4Matrix}


def quantize(weight: torch.Tensor, kind: str | None) -> Matrix:
    if kind == "int4" and (weight.shape[1] % INT4_GROUP or weight.shape[0] % 64):
        return Int8Matrix(weight)  # int4 needs whole groups (and torch's kernel blocks of 64 rows): int8
    return KINDS[kind](weight)


def from_tensors(tensors: dict[str, torch.Tensor], name: str) -> Matrix:
    """A matrix saved by `Matrix.tensors(name)` (a converted file)."""
    if f"{name}.q8" in tensors:
        return Int8Matrix(q=tensors[f"{name}.q8"], scale=tensors[f"{name}.scale"])
    if f"{name}.q4" in tensors:
        return Int4Matrix(packed_bytes=tensors[f"{name}.q4"], scale=tensors[f"{name}.scale"])
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
