"""The fused decode step in C (`_decode.c`), built at install and called through ctypes.

Decode is bound by memory bandwidth, but the torch path spends most of each token dispatching
small ops. `_decode.c` runs one token through every layer in a single call on one OpenMP team
(with gcc: torch's own libgomp). setup.py compiles it once per instruction set of the machine's
architecture (x86-64: AVX-512 with VNNI, AVX2 with FMA, portable; aarch64: NEON with sdot,
portable), each an extension module `_kernels_<variant>`; the best one this CPU runs is loaded
here, chosen from the CPU's features, never compiled at run time. EDGEWISE_KERNELS=avx512|avx2|
neon|portable|torch forces a path (EDGEWISE_RWKV_NATIVE=0, from before, still means torch);
EDGEWISE_KERNELS_LIB=path loads another build (a sanitizer build, in the tests). Where no variant
is installed or runs, the runtime decodes on the torch path and says so once on stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from edgewise.errors import EdgewiseError
from edgewise.measure.machine import cpu_flags

SOURCE = Path(__file__).with_name("_decode.c")
F32, BF16, INT8, INT4 = 0, 1, 2, 3
# Best first: the CPU features (as Linux's /proc/cpuinfo names them) each variant is compiled for.
VARIANTS = {
    "avx512": ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "fma"),
    "avx2": ("avx2", "fma", "f16c", "bmi2"),
    "neon": ("asimd", "asimddp"),
    # x86-64-v2 on x86 (maddubs: every x86-64 CPU since 2009-2011; older ones decode on torch), none on aarch64
    "portable": ("ssse3", "sse4_1", "sse4_2", "popcnt") if platform.machine().lower() in ("x86_64", "amd64") else (),
}
PATHS = (*VARIANTS, "torch")


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


class KernelError(RuntimeError):
    """The kernels cannot be loaded: not built, a stale build, structs laid out differently."""


def installed() -> list[str]:
    """The variants built for this machine's architecture, best first."""
    return [v for v in VARIANTS if importlib.util.find_spec(f"edgewise.rwkv._kernels_{v}") is not None]


def runnable() -> list[str]:
    """The installed variants this CPU runs, best first."""
    flags = cpu_flags()
    return [v for v in installed() if set(VARIANTS[v]) <= flags]


def load(path: str | Path) -> ctypes.CDLL:
    """Load a kernel library and check that it matches this module: its structs' layout, as the C
    side reports it, and the _decode.c it was built from."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise KernelError(f"{path}: cannot be loaded ({exc})") from None
    lib.ew_layout.restype, lib.ew_layout.argtypes = ctypes.c_int64, [ctypes.POINTER(ctypes.c_int64), ctypes.c_int64]
    expected = layout()
    found = (ctypes.c_int64 * len(expected))()
    if lib.ew_layout(found, len(expected)) != len(expected) or list(found) != expected:
        raise KernelError(f"{Path(path).name}: its structs are laid out unlike native.py's; reinstall edgewise")
    lib.ew_source_hash.restype = ctypes.c_char_p
    built_from = lib.ew_source_hash().decode()
    if built_from and SOURCE.is_file() and built_from != hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]:
        raise KernelError(f"{Path(path).name} was built from another _decode.c; rebuild it "
                          "(pip install -e . or make setup)")
    lib.ew_problem.restype = ctypes.c_char_p
    lib.ew_check.restype = lib.ew_decode.restype = lib.ew_matmul.restype = ctypes.c_int
    lib.ew_check.argtypes = [ctypes.POINTER(Model)]
    lib.ew_decode.argtypes = [ctypes.POINTER(Model), ctypes.c_int64, ctypes.POINTER(State), ctypes.POINTER(State),
                              ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.ew_matmul.argtypes = [ctypes.POINTER(Matrix), ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.ew_decode_batch.restype = ctypes.c_int
    lib.ew_decode_batch.argtypes = [ctypes.POINTER(Model), ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(State),
                                    ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.ew_gemm_q8.restype = ctypes.c_int
    lib.ew_gemm_q8.argtypes = lib.ew_matmul.argtypes
    lib.ew_dequantize.restype = ctypes.c_int
    lib.ew_dequantize.argtypes = [ctypes.POINTER(Matrix), ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                  ctypes.c_int64, ctypes.c_int]
    lib.ew_use_amx.restype, lib.ew_use_amx.argtypes = ctypes.c_int, [ctypes.c_int]
    lib.ew_use_amx(os.environ.get("EDGEWISE_AMX", "1").strip() != "0")   # EDGEWISE_AMX=0: VNNI for batches too
    lib.ew_choose_int4.restype, lib.ew_choose_int4.argtypes = ctypes.c_int, [ctypes.c_int]
    _choose_int4(lib, built_from)
    lib.ew_wkv.restype = ctypes.c_int
    lib.ew_wkv.argtypes = ([ctypes.c_int64, ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 8
                           + [ctypes.c_int64, ctypes.c_int64, ctypes.c_int])
    lib.ew_sample.restype = ctypes.c_int
    lib.ew_sample.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int]
    return lib


def _choose_int4(lib: ctypes.CDLL, built_from: str) -> None:
    """The AVX-512 build's int4 rows in 512- or 256-bit vectors (ew_choose_int4): measured once per
    CPU and build, then kept in the cache folder, so that every process here decodes int4 the same
    way (the two kernels add up in different orders). Elsewhere, nothing to choose."""
    if not lib.ew_features() & 2:   # no AVX-512 VNNI int4 kernels in this build
        return
    from edgewise.files import cache_dir, write_json
    from edgewise.measure.machine import _cpu_model

    key = hashlib.sha1(f"{_cpu_model()}|{os.cpu_count()}|{built_from}".encode()).hexdigest()[:12]
    try:
        path = cache_dir() / "kernels" / f"int4-{key}.json"
    except OSError:   # no cache folder can be made: measure each time
        path = None
    try:
        kept = json.loads(path.read_text()).get("int4_ymm") if path else None
    except (OSError, ValueError, AttributeError):   # none yet, or damaged: measure again
        kept = None
    if kept in (0, 1):
        lib.ew_choose_int4(kept)
        return
    chosen = lib.ew_choose_int4(-1)
    if path is not None:
        with contextlib.suppress(OSError):
            write_json(path, {"cpu": _cpu_model(), "build": built_from, "int4_ymm": chosen})


@functools.cache
def variant(name: str) -> ctypes.CDLL:
    """The installed library of one variant (whether or not this CPU runs it: check `runnable`)."""
    spec = importlib.util.find_spec(f"edgewise.rwkv._kernels_{name}") if name in VARIANTS else None
    if spec is None or not spec.origin:
        raise KernelError(f"the {name} kernels are not built for this machine ({platform.machine()})")
    return load(spec.origin)


def _raise_for(lib: ctypes.CDLL, status: int, what: str) -> None:
    """The C side refused its inputs (a caller's bug: Python checks files first) or ran out of memory."""
    if status == 1:
        raise MemoryError(f"{what}: out of memory for its scratch buffers")
    if status:
        raise ValueError(f"{what}: {lib.ew_problem().decode(errors='replace')}")


def kernels(lib: ctypes.CDLL | None) -> str:
    """What decodes: "c-avx512-vnni-amx" (AMX tiles for batches of streams and prompts),
    "c-avx512-vnni", "c-avx512", "c-avx2", "c-neon", "c-x86-64-v2" (the portable x86-64 build),
    "c-portable" or "torch"; an AVX-512 name ends in "-int4ymm" where one stream's int4 rows take
    256-bit vectors, measured faster on this CPU (one that splits 512-bit ones in two, as Zen 4 does)."""
    if lib is None:
        return "torch"
    features = lib.ew_features()
    if features & 1:
        return ("c-avx512" + ("-vnni" if features & 2 else "") + ("-amx" if features & 32 else "")
                + ("-int4ymm" if features & 64 else ""))
    return "c-avx2" if features & 4 else "c-neon" if features & 8 else "c-x86-64-v2" if features & 16 else "c-portable"


_disabled = 0


def library() -> ctypes.CDLL | None:
    """The kernels for this machine, or None: inside `disabled()`, with EDGEWISE_KERNELS=torch, or
    (after one line on stderr) when none is installed or loads. A forced path this machine cannot
    run is an EdgewiseError."""
    return None if _disabled else _library()


@functools.cache
def _library() -> ctypes.CDLL | None:
    forced = os.environ.get("EDGEWISE_KERNELS", "").strip().lower()
    if os.environ.get("EDGEWISE_RWKV_NATIVE") == "0" or forced == "torch":
        return None
    if os.environ.get("EDGEWISE_KERNELS_LIB"):
        try:
            return load(os.environ["EDGEWISE_KERNELS_LIB"])
        except KernelError as exc:
            raise EdgewiseError(f"EDGEWISE_KERNELS_LIB: {exc}") from None
    if forced:
        if forced not in VARIANTS:
            raise EdgewiseError(f"EDGEWISE_KERNELS={forced}: use one of {', '.join(PATHS)}")
        if forced not in installed():
            raise EdgewiseError(f"EDGEWISE_KERNELS={forced}: not built for this machine ({platform.machine()}); "
                                f"it has {', '.join(installed()) or 'none'}")
        missing = sorted(set(VARIANTS[forced]) - cpu_flags())
        if missing:
            raise EdgewiseError(f"EDGEWISE_KERNELS={forced}: this CPU lacks {', '.join(missing)}; "
                                f"it runs {', '.join(runnable()) or 'torch only'}")
        try:
            return variant(forced)
        except KernelError as exc:
            raise EdgewiseError(f"EDGEWISE_KERNELS={forced}: {exc}") from None
    for name in runnable():
        try:
            return variant(name)
        except KernelError as exc:
            print(f"edgewise: RWKV decode kernels: {exc}", file=sys.stderr)
            break
    else:
        print("edgewise: RWKV decode runs on the slower torch path: no compiled kernels for this CPU "
              "(they are built at install when a C compiler is present)", file=sys.stderr)
    return None


def forget() -> None:
    """Choose the kernels again on next use (after the environment changed)."""
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


def matmul(lib: ctypes.CDLL, matrix: Matrix, x: torch.Tensor, int8_activations: bool = False) -> torch.Tensor:
    """x [T, cols] -> [T, rows] float32 through `ew_matmul` (the decode kernels, for a few rows) or,
    with `int8_activations`, `ew_gemm_q8` (an int8 or int4 matrix, cols a multiple of 64: a prefill)."""
    if x.dim() != 2 or x.shape[1] != matrix.cols:
        raise ValueError(f"matmul: x must be [T, {matrix.cols}], got {list(x.shape)}")
    x = x.float().contiguous()
    y = torch.empty(x.shape[0], matrix.rows)
    kernel = lib.ew_gemm_q8 if int8_activations else lib.ew_matmul
    _raise_for(lib, kernel(ctypes.byref(matrix), _ptr(x), x.numel(), x.shape[0], _ptr(y), y.numel(),
                           torch.get_num_threads()), "matmul")
    return y


NOT_FINITE = 5   # ew_sample: a row of logits holds NaN or an infinity


def sample(lib: ctypes.CDLL, logits: np.ndarray, temperature: np.ndarray, u: np.ndarray) -> np.ndarray | None:
    """Tokens [B] drawn from logits [B, vocab] (float32, C-contiguous) through `ew_sample`: row b's
    argmax where temperature[b] is 0, else its draw at u[b] from the softmax at that temperature over
    the whole vocabulary. None when a row is not finite."""
    B, vocab = logits.shape
    temperature, u = np.ascontiguousarray(temperature, np.float32), np.ascontiguousarray(u, np.float64)
    tokens = np.empty(B, np.int64)
    status = lib.ew_sample(logits.ctypes.data, B, vocab, temperature.ctypes.data, u.ctypes.data, tokens.ctypes.data,
                           torch.get_num_threads())
    if status == NOT_FINITE:
        return None
    _raise_for(lib, status, "sampling")
    return tokens


def dequantize(lib: ctypes.CDLL, matrix: Matrix, rows: range) -> torch.Tensor:
    """Rows of a matrix as float32 [len(rows), cols] through `ew_dequantize` (rows: step 1)."""
    out = torch.empty(len(rows), matrix.cols)
    _raise_for(lib, lib.ew_dequantize(ctypes.byref(matrix), rows.start, len(rows), _ptr(out), out.numel(),
                                      torch.get_num_threads()), "dequantize")
    return out


def wkv(lib: ctypes.CDLL, S: torch.Tensor, r, w, k, v, kk, a) -> torch.Tensor:
    """The WKV-7 recurrence over T tokens through `ew_wkv`: S [H, N, N] float32 contiguous,
    updated in place; the others [T, H * N]. Returns y [T, H * N]."""
    H, N = S.shape[0], S.shape[1]
    if S.dtype != torch.float32 or not S.is_contiguous() or tuple(S.shape) != (H, N, N):
        raise ValueError("wkv: S must be float32, contiguous, [H, N, N]")
    r, w, k, v, kk, a = (_aligned(t.float()) for t in (r, w, k, v, kk, a))
    if any(t.shape != r.shape for t in (w, k, v, kk, a)) or r.dim() != 2 or r.shape[1] != H * N:
        raise ValueError(f"wkv: every sequence must be [T, {H * N}]")
    y = torch.empty(r.shape)
    _raise_for(lib, lib.ew_wkv(r.shape[0], H, N, _ptr(S), *(_ptr(t) for t in (r, w, k, v, kk, a, y)), S.numel(),
                               r.numel(), torch.get_num_threads()), "wkv")
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

    def step(self, token: int, state, out=None, logits: np.ndarray | None = None) -> np.ndarray:
        """Logits after `token`; `state` (an RWKVState) is read and `out` (default: `state`)
        receives the next state. C writes into `out`: it must be float32, contiguous and of this
        model's shape. `logits`: where to write them (see `_logits_out`), else a new array."""
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
        logits = _logits_out(logits, (self.vocab,))
        status = self.lib.ew_decode(ctypes.byref(self.model), token, ctypes.byref(_state(state)),
                                    ctypes.byref(_state(out)), logits.ctypes.data, logits.size, torch.get_num_threads())
        _raise_for(self.lib, status, "RWKV decode")
        return logits


    def step_batch(self, tokens: list[int], batch, logits: np.ndarray | None = None) -> np.ndarray:
        """Logits [B, vocab] after one token of each stream of `batch` (a StateBatch: float32,
        contiguous, [B, L, ...]), whose states advance in place; into `logits` when given."""
        d, B = self.model, len(tokens)
        shapes = ((B, d.layers, d.width), (B, d.layers, d.width), (B, d.layers, d.heads, d.head_size, d.head_size))
        tensors = (batch.att_prev, batch.ffn_prev, batch.S)
        if any(tuple(t.shape) != shape or t.dtype != torch.float32 or not t.is_contiguous() or t.data_ptr() % 4
               for t, shape in zip(tensors, shapes)):
            raise ValueError("the batch of states must be float32, contiguous and shaped [B, ...] for this model")
        states = (State * B)(*(State(*(_ptr(t) + b * t[0].numel() * 4 for t in tensors), *(t[0].numel() for t in tensors))
                               for b in range(B)))
        ids = np.asarray(tokens, dtype=np.int64)
        logits = _logits_out(logits, (B, self.vocab))
        status = self.lib.ew_decode_batch(ctypes.byref(self.model), B, ids.ctypes.data, states, logits.ctypes.data,
                                          logits.size, torch.get_num_threads())
        _raise_for(self.lib, status, "RWKV batch decode")
        return logits


def _logits_out(logits: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """`logits` checked as a buffer C may write `shape` float32s into, or a new one. A server's
    batcher passes the same buffer every step: a new [8, 65536] array each step was mapped, faulted
    in and unmapped again (2 MB, above malloc's mmap threshold), and its unmapping interrupted the
    other core (~4% of 8 streams' tokens/s)."""
    if logits is None:
        return np.empty(shape, dtype=np.float32)
    if logits.shape != shape or logits.dtype != np.float32 or not logits.flags.c_contiguous or not logits.flags.writeable:
        raise ValueError(f"the logits buffer must be float32, C-contiguous, writeable and shaped {shape}")
    return logits


def _state(state) -> State:
    """The C view of an RWKVState whose tensors are float32 and contiguous."""
    tensors = (state.att_prev, state.ffn_prev, state.S)
    return State(*(_ptr(t) for t in tensors), *(t.numel() for t in tensors))
