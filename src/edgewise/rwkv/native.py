"""The fused decode step in C (`_decode.c`): compiled on first use, cached, called through ctypes.

Decode is bound by memory bandwidth, but the torch path spends most of each token dispatching
small ops. `_decode.c` runs one token through every layer in a single call on one OpenMP team
(with gcc: torch's own libgomp). It needs a C compiler (`$CC`, else cc/gcc/clang) the first
time; the library is cached per source, flags and CPU. Where `-march=native` does not build, a
portable build serves. Without a compiler, or with EDGEWISE_RWKV_NATIVE=0, the runtime decodes
on the torch path and says so once on stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from edgewise.errors import EdgewiseError
from edgewise.files import atomic_path, cache_dir

SOURCE = Path(__file__).with_name("_decode.c")
F32, BF16, INT8, INT4 = 0, 1, 2, 3
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math")
PORTABLE_FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-DEW_SCALAR")
# EDGEWISE_RWKV_SANITIZE=1 builds the kernels with AddressSanitizer and UBSan, every report fatal
# (for the tests; the process needs LD_PRELOAD=$(gcc -print-file-name=libasan.so)).
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
if os.environ.get("EDGEWISE_RWKV_SANITIZE") == "1":
    FLAGS, PORTABLE_FLAGS = FLAGS + SANITIZE_FLAGS, PORTABLE_FLAGS + SANITIZE_FLAGS


class Matrix(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("rows", ctypes.c_int32), ("cols", ctypes.c_int32),
                ("unused", ctypes.c_int32), ("data", ctypes.c_void_p), ("scale", ctypes.c_void_p),
                ("data_bytes", ctypes.c_int64), ("scale_count", ctypes.c_int64)]


class Vector(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_int64)]


_VECTORS = ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "mix", "w0", "a0", "v0", "k_k", "k_a", "r_k", "lnx_w", "lnx_b", "ffn_xk")
_LORAS = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
_BIG = ("r", "k", "v", "o", "fk", "fv")


class Layer(ctypes.Structure):
    _fields_ = ([(name, Vector) for name in _VECTORS] + [(name, Matrix) for name in _LORAS]
                + [(name, Matrix) for name in _BIG])


class Model(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_int32), ("width", ctypes.c_int32), ("heads", ctypes.c_int32),
                ("head_size", ctypes.c_int32), ("ffn", ctypes.c_int32), ("vocab", ctypes.c_int32),
                ("layer", ctypes.POINTER(Layer)), ("emb", Matrix), ("ln_out_w", Vector),
                ("ln_out_b", Vector), ("head", Matrix)]


class State(ctypes.Structure):
    _fields_ = [("att", ctypes.c_void_p), ("ffn", ctypes.c_void_p), ("S", ctypes.c_void_p),
                ("att_size", ctypes.c_int64), ("ffn_size", ctypes.c_int64), ("S_size", ctypes.c_int64)]


_STRUCTS = (Matrix, Vector, Layer, Model, State)


def layout() -> list[int]:
    """The sizes of the structs shared with C, then every field's offset: what `ew_layout` reports."""
    return [ctypes.sizeof(s) for s in _STRUCTS] + [getattr(s, name).offset for s in _STRUCTS for name, _ in s._fields_]


class CompileError(RuntimeError):
    pass


def compiler() -> list[str] | None:
    """The C compiler command: $CC (may carry a wrapper, as "ccache gcc"), else cc, gcc or clang."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    return [found] if found else None


def build(flags: tuple[str, ...] = FLAGS) -> ctypes.CDLL:
    """Compile `_decode.c` (or reuse the cached build) and load it. Raises CompileError."""
    cc = compiler()
    if cc is None:
        raise CompileError("no C compiler found (set CC or install gcc)")
    path = cached_build(cc, flags)
    for attempt in range(2):
        if not path.is_file():
            _compile(cc, flags, path)
        try:
            lib = ctypes.CDLL(str(path))
            break
        except OSError:
            if attempt:
                raise
            path.unlink(missing_ok=True)   # a damaged cached build: build it again, once
    lib.ew_layout.restype, lib.ew_layout.argtypes = ctypes.c_int64, [ctypes.POINTER(ctypes.c_int64), ctypes.c_int64]
    expected = layout()
    found = (ctypes.c_int64 * len(expected))()
    if lib.ew_layout(found, len(expected)) != len(expected) or list(found) != expected:
        raise CompileError(f"{path}: its structs are laid out unlike native.py's; delete it to rebuild")
    lib.ew_problem.restype = ctypes.c_char_p
    lib.ew_check.restype = lib.ew_decode.restype = lib.ew_matmul.restype = ctypes.c_int
    lib.ew_check.argtypes = [ctypes.POINTER(Model)]
    lib.ew_decode.argtypes = [ctypes.POINTER(Model), ctypes.c_int64, ctypes.POINTER(State), ctypes.POINTER(State),
                              ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.ew_matmul.argtypes = [ctypes.POINTER(Matrix), ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    return lib


def _raise_for(lib: ctypes.CDLL, status: int, what: str) -> None:
    """The C side refused its inputs (a caller's bug: Python checks files first) or ran out of memory."""
    if status == 1:
        raise MemoryError(f"{what}: out of memory for its scratch buffers")
    if status:
        raise ValueError(f"{what}: {lib.ew_problem().decode(errors='replace')}")


def cached_build(cc: list[str], flags: tuple[str, ...]) -> Path:
    """Where the build of this source with this compiler, these flags, for this CPU is cached."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((*cc, *flags)).encode() + _cpu_signature()).hexdigest()[:16]
    return cache_dir() / "native" / f"rwkv7-decode-{key}.so"


def _compile(cc: list[str], flags: tuple[str, ...], path: Path) -> None:
    with atomic_path(path) as tmp:
        try:
            done = subprocess.run([*cc, *flags, str(SOURCE), "-o", str(tmp), "-lm"], capture_output=True, text=True,
                                  timeout=300)
        except subprocess.TimeoutExpired:
            raise CompileError(f"{cc[-1]} took more than 5 minutes") from None
        if done.returncode != 0:
            raise CompileError(f"{cc[-1]} failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]}")


def kernels(lib: ctypes.CDLL | None) -> str:
    """What decodes: "c-avx512-vnni", "c-avx512", "c-portable" or "torch"."""
    if lib is None:
        return "torch"
    features = lib.ew_features()
    return "c-" + ("avx512" + ("-vnni" if features & 2 else "") if features & 1 else "portable")


def _cpu_signature() -> bytes:
    """-march=native builds for this CPU: a cache shared between machines must not mix them."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return flags.encode()


_disabled = 0


def library() -> ctypes.CDLL | None:
    """The compiled kernels for this machine, or None: inside `disabled()`, with
    EDGEWISE_RWKV_NATIVE=0, or (after one line on stderr) when they cannot be built."""
    return None if _disabled else _library()


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("EDGEWISE_RWKV_NATIVE", "1") == "0":
        return None
    try:
        try:
            return build()
        except CompileError:
            return build(PORTABLE_FLAGS)   # e.g. a compiler that rejects -march=native
    except (CompileError, OSError, EdgewiseError) as exc:   # no compiler, a failed build, an unwritable cache
        print(f"edgewise: RWKV decode runs on the slower torch path: {exc}", file=sys.stderr)
        return None


def forget() -> None:
    """Build or load the kernels again on next use (after CC or the cache folder changed)."""
    _library.cache_clear()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Everything on the torch path while inside (to compare the two)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """`t`, contiguous and aligned to its element size (a tensor read from a file at an odd offset
    is not: C may not load a float from it)."""
    t = t.contiguous()
    return t if t.data_ptr() % t.element_size() == 0 else t.clone()


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def describe(matrix, keep: list[torch.Tensor]) -> Matrix:
    """The C view of a quant.Matrix (fp32, int8 or int4); the tensors it points to go to `keep`."""
    if matrix.kind == "int8":
        return int8_rows(matrix.q, matrix.scale, keep)
    if matrix.kind == "int4":
        packed, scale = _aligned(matrix.packed_bytes), _aligned(matrix.scale.float())
        keep += [packed, scale]
        rows, half = packed.shape
        return Matrix(INT4, rows, half * 2, 0, _ptr(packed), _ptr(scale), _bytes(packed), scale.numel())
    return dense(matrix.weight, keep)


def int8_rows(q: torch.Tensor, scale: torch.Tensor, keep: list[torch.Tensor]) -> Matrix:
    """The C view of int8 rows q [rows, cols] with one fp32 scale per row."""
    q, scale = _aligned(q), _aligned(scale.float())
    keep += [q, scale]
    return Matrix(INT8, *q.shape, 0, _ptr(q), _ptr(scale), _bytes(q), scale.numel())


def dense(tensor: torch.Tensor, keep: list[torch.Tensor]) -> Matrix:
    """The C view of an fp32 or bf16 [rows, cols] tensor."""
    tensor = _aligned(tensor)
    keep.append(tensor)
    kind = {torch.float32: F32, torch.bfloat16: BF16}[tensor.dtype]
    return Matrix(kind, tensor.shape[0], tensor.shape[1], 0, _ptr(tensor), None, _bytes(tensor), 0)


def matmul(lib: ctypes.CDLL, matrix: Matrix, x: torch.Tensor) -> torch.Tensor:
    """x [T, cols] -> [T, rows] float32 through `ew_matmul`."""
    if x.dim() != 2 or x.shape[1] != matrix.cols:
        raise ValueError(f"matmul: x must be [T, {matrix.cols}], got {list(x.shape)}")
    x = x.float().contiguous()
    y = torch.empty(x.shape[0], matrix.rows)
    _raise_for(lib, lib.ew_matmul(ctypes.byref(matrix), _ptr(x), x.numel(), x.shape[0], _ptr(y), y.numel(),
                                  torch.get_num_threads()), "matmul")
    return y


class Decoder:
    """One model's weights laid out for `ew_decode`; `step` decodes one token."""

    def __init__(self, model, lib: ctypes.CDLL) -> None:
        self.lib, self.vocab = lib, model.dims.vocab
        self._keep: list[torch.Tensor] = []   # every tensor the C side points to stays alive
        d = model.dims
        layers = (Layer * d.layers)()
        lora_dtype = torch.bfloat16 if model.quant else torch.float32
        for i, source in enumerate(model.layers):
            p, target = source.p, layers[i]
            vectors = {"ln1_w": p["ln1.weight"], "ln1_b": p["ln1.bias"], "ln2_w": p["ln2.weight"],
                       "ln2_b": p["ln2.bias"], "mix": source.mix, "w0": p["att.w0"], "a0": p["att.a0"],
                       "v0": p.get("att.v0", p["att.a0"]), "k_k": p["att.k_k"], "k_a": p["att.k_a"],
                       "r_k": p["att.r_k"], "lnx_w": p["att.ln_x.weight"], "lnx_b": p["att.ln_x.bias"],
                       "ffn_xk": p["ffn.x_k"]}
            for name, tensor in vectors.items():
                setattr(target, name, self._vector(tensor))
            for name in _LORAS:
                tensor = p.get(f"att.{name}")
                if tensor is None or (name[0] == "v" and i == 0):   # layer 0 mixes no v_first
                    continue
                setattr(target, name, dense(tensor.T.contiguous().to(lora_dtype), self._keep))  # x @ W: W.T rows
            for name, key in zip(_BIG, ("att.receptance.weight", "att.key.weight", "att.value.weight",
                                        "att.output.weight", "ffn.key.weight", "ffn.value.weight")):
                setattr(target, name, describe(source.m[key], self._keep))
        emb = model.emb
        table = dense(emb.table.float(), self._keep) if emb.table is not None else int8_rows(emb.q, emb.scale, self._keep)
        self.model = Model(d.layers, d.width, d.heads, d.head_size, d.ffn, d.vocab, layers, table,
                           self._vector(model.ln_out[0]), self._vector(model.ln_out[1]),
                           describe(model.head, self._keep))
        self._layers = layers
        _raise_for(lib, lib.ew_check(ctypes.byref(self.model)), "RWKV decode")

    def _vector(self, tensor: torch.Tensor) -> Vector:
        tensor = _aligned(tensor.float())
        self._keep.append(tensor)
        return Vector(_ptr(tensor), tensor.numel())

    def step(self, token: int, state, out=None) -> np.ndarray:
        """Logits after `token`; `state` (an RWKVState) is read and `out` (default: `state`)
        receives the next state. C writes into `out`: it must be float32, contiguous and of this
        model's shape."""
        d, out = self.model, state if out is None else out
        if not 0 <= token < d.vocab:
            raise ValueError(f"token {token} is outside the vocabulary 0..{d.vocab - 1}")
        shapes = ((d.layers, d.width), (d.layers, d.width), (d.layers, d.heads, d.head_size, d.head_size))
        tensors = (out.att_prev, out.ffn_prev, out.S)
        if any(tuple(t.shape) != shape or t.dtype != torch.float32 or not t.is_contiguous() or t.data_ptr() % 4
               for t, shape in zip(tensors, shapes)):
            raise ValueError("the output state must be float32, contiguous and shaped for this model")
        if any(tuple(t.shape) != shape for t, shape in zip((state.att_prev, state.ffn_prev, state.S), shapes)):
            raise ValueError("the state is shaped for another model")
        state = type(state)(*(_aligned(t.float()) for t in (state.att_prev, state.ffn_prev, state.S)))
        logits = np.empty(self.vocab, dtype=np.float32)
        status = self.lib.ew_decode(ctypes.byref(self.model), token, ctypes.byref(_state(state)),
                                    ctypes.byref(_state(out)), logits.ctypes.data, logits.size, torch.get_num_threads())
        _raise_for(self.lib, status, "RWKV decode")
        return logits


def _state(state) -> State:
    """The C view of an RWKVState whose tensors are float32 and contiguous."""
    tensors = (state.att_prev, state.ffn_prev, state.S)
    return State(*(_ptr(t) for t in tensors), *(t.numel() for t in tensors))
