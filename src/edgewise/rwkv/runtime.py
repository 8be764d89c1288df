"""The fast RWKV-7 runtime on the CPU: large matrices fp32, int8 or int4, state fp32.

A prompt is prefilled as a sequence in torch: every matmul runs over all its tokens at once and
only the WKV recurrence steps token by token. A single token (decode) runs through every layer
in one call of the fused C step (`native`, `_decode.c`), or in torch where that cannot be built.
Both are tested against `reference.py` and against each other.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from edgewise.errors import EdgewiseError
from edgewise.files import atomic_path
from edgewise.rwkv import checkpoint, converted, native
from edgewise.runtime.torch import load_weights
from edgewise.rwkv.checkpoint import MATRICES, Dims
from edgewise.rwkv.converted import CONVERTED_FORMAT
from edgewise.rwkv.quant import (DEQUANTIZE_ROWS, Embedding, Matrix, fold_embedding, from_tensors, prefill_gemm,
                                 quantize)
from edgewise.rwkv.state import RWKVState, StateBatch

FORMAT_VERSION = 2  # 2: int4 nibbles split by half-group (see quant.Int4Matrix)
PREFILL_CHUNK = 256  # tokens per prefill pass: bounds activation memory; 256 keeps the GEMMs efficient
_MIX = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
_SMALL = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.w0", "att.w1", "att.w2", "att.a0", "att.a1",
          "att.a2", "att.v0", "att.v1", "att.v2", "att.g1", "att.g2", "att.k_k", "att.k_a", "att.r_k",
          "att.ln_x.weight", "att.ln_x.bias", "ffn.x_k") + tuple(f"att.{m}" for m in _MIX)



def _small(layer: int) -> tuple[str, ...]:
    """The small tensors a layer reads: layer 0 mixes no v_first, so the v LoRA some checkpoints
    carry there (unchecked dummies) is left out."""
    return _SMALL if layer else tuple(n for n in _SMALL if n not in ("att.v0", "att.v1", "att.v2"))


@dataclass
class _Layer:
    p: dict[str, torch.Tensor]      # small fp32 tensors, [C] or LoRA [C, D] / [D, C]
    mix: torch.Tensor               # [6, 1, C]: x_r, x_w, x_k, x_v, x_a, x_g
    m: dict[str, Matrix]            # R K V O FK FV
    lora_in: torch.Tensor = None    # [4, C, D]: w1, a1, v1, g1 zero-padded to one rank D
    lora_out: torch.Tensor = None   # [4, D, C]: w2, a2, v2, g2
    lora_dtype: torch.dtype = torch.float32   # bf16 in quantized models: half the memory

    def __post_init__(self) -> None:
        # The four LoRAs run as two batched matmuls instead of eight small ones (decode is
        # dominated by per-op overhead). Layer 0 has no v LoRA: zeros, its result unused.
        width = self.mix.shape[-1]
        firsts = [self.p.get(f"att.{n}1", torch.zeros(width, 1)) for n in "wavg"]
        rank = max(f.shape[1] for f in firsts)
        self.lora_in = torch.stack([F.pad(f, (0, rank - f.shape[1])) for f in firsts]).to(self.lora_dtype)
        seconds = [self.p.get(f"att.{n}2", torch.zeros(f.shape[1], width)) for n, f in zip("wavg", firsts)]
        self.lora_out = torch.stack([F.pad(s_, (0, 0, 0, rank - s_.shape[0])) for s_ in seconds]).to(self.lora_dtype)


class PrefixCache:
    """States after recent prompts, so a shared prefix is not computed twice (LRU)."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries, self.hits = max_entries, 0
        self._entries: OrderedDict[tuple[int, ...], tuple[RWKVState, np.ndarray]] = OrderedDict()

    def longest(self, tokens: list[int]) -> tuple[int, RWKVState | None, np.ndarray | None]:
        best = max((key for key in self._entries if len(key) <= len(tokens) and tuple(tokens[:len(key)]) == key),
                   key=len, default=None)
        if best is None:
            return 0, None, None
        self.hits += 1
        self._entries.move_to_end(best)
        state, logits = self._entries[best]
        return len(best), state.copy(), logits.copy()

    def put(self, tokens: list[int], state: RWKVState, logits: np.ndarray) -> None:
        self._entries[tuple(tokens)] = (state.copy(), logits.copy())
        self._entries.move_to_end(tuple(tokens))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class RWKV:
    """An RWKV-7 model ready to run. Load with `RWKV.load(path, quant=None|"int8"|"int4")`."""

    def __init__(self, dims: Dims, emb: Embedding, layers: list[_Layer], ln_out: tuple[torch.Tensor, torch.Tensor],
                 head: Matrix, quant: str | None) -> None:
        self.dims, self.emb, self.layers, self.ln_out, self.head, self.quant = dims, emb, layers, ln_out, head, quant
        self.cache = PrefixCache()
        self._decoder: native.Decoder | None | bool = False   # built on the first decode

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, quant: str | None = None) -> RWKV:
        """An official x070 checkpoint (.pth or .safetensors), quantized on the way in, or a file
        written by `save` (already quantized: `quant` must be None or match)."""
        if quant not in (None, "fp32", "int8", "int4"):
            raise EdgewiseError(f"quant {quant!r}: use int8 or int4 (or none for fp32)")
        quant = None if quant == "fp32" else quant
        path = Path(path)
        weights = load_weights(path)
        if CONVERTED_FORMAT in weights:
            return cls._load_converted(path, weights, quant)
        dims = checkpoint.dims_of(weights, path)
        emb = fold_embedding(weights["emb.weight"], weights["blocks.0.ln0.weight"].float(),
                             weights["blocks.0.ln0.bias"].float(), quantized=quant is not None)
        layers = []
        for i in range(dims.layers):
            b = f"blocks.{i}."
            p = {name: weights[b + name].float() for name in _small(i) if b + name in weights}   # checked shapes
            p["att.r_k"] = p["att.r_k"].reshape(-1)   # [H, N] -> [C], as converted files store it
            matrices = {name: quantize(weights[b + name], quant) for name in MATRICES}
            layers.append(_Layer(p, torch.stack([p[f"att.{m}"] for m in _MIX])[:, None, :], matrices,
                                 lora_dtype=torch.bfloat16 if quant else torch.float32))
        ln_out = (weights["ln_out.weight"].float(), weights["ln_out.bias"].float())
        head = quantize(weights["head.weight"], quant)
        return cls(dims, emb, layers, ln_out, head, quant)

    @classmethod
    def _load_converted(cls, path: Path, tensors: dict, quant: str | None) -> RWKV:
        header = converted.read_header(tensors, path)
        stored = {0: None, 8: "int8", 4: "int4"}[header[6]]
        if stored == "int4" and (header[7:] or [1])[0] < FORMAT_VERSION:
            raise EdgewiseError(f"{path} was converted by an older edgewise (another int4 layout); "
                                "convert the original checkpoint again")
        if quant is not None and quant != stored:
            raise EdgewiseError(f"{path} is already converted to {stored or 'fp32'}; load it without --quant "
                                f"or convert the original checkpoint to {quant}")
        dims = converted.check(tensors, path)
        layers = []
        for i in range(dims.layers):
            b = f"blocks.{i}."
            p = {name: tensors[b + name] for name in _small(i) if b + name in tensors}
            matrices = {name: from_tensors(tensors, b + name) for name in MATRICES}
            layers.append(_Layer(p, torch.stack([p[f"att.{m}"] for m in _MIX])[:, None, :], matrices,
                                 lora_dtype=torch.bfloat16 if stored else torch.float32))
        return cls(dims, Embedding.from_tensors(tensors), layers, (tensors["ln_out.weight"], tensors["ln_out.bias"]),
                   from_tensors(tensors, "head.weight"), stored)

    def save(self, path: str | Path) -> Path:
        """Write this model, quantized as loaded, as safetensors (the format states use too):
        plain tensors, nothing a loader could execute."""
        tensors = self.tensors()
        with atomic_path(path) as tmp:
            # clone: views of one buffer (embedding parts, packed matrices) are stored apart
            save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(tmp),
                      metadata={"format": CONVERTED_FORMAT})
        return Path(path)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of this model by its name in a converted file, the format header first."""
        d = self.dims
        header = [d.layers, d.width, d.heads, d.head_size, d.vocab, d.ffn, {None: 0, "int8": 8, "int4": 4}[self.quant],
                  FORMAT_VERSION]
        tensors = {CONVERTED_FORMAT: torch.tensor(header), **self.emb.tensors(), "ln_out.weight": self.ln_out[0],
                   "ln_out.bias": self.ln_out[1], **self.head.tensors("head.weight")}
        for i, layer in enumerate(self.layers):
            tensors.update({f"blocks.{i}.{k}": v for k, v in layer.p.items()})
            for name, matrix in layer.m.items():
                tensors.update(matrix.tensors(f"blocks.{i}.{name}"))
        return tensors

    @property
    def resident_bytes(self) -> int:
        """Bytes of memory this model's tensors hold (each buffer once, however many views it has)."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in self.tensors().values()}
        for layer in self.layers:   # what loading adds beyond the file: the stacked mixes and LoRAs
            for t in (layer.mix, layer.lora_in, layer.lora_out):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(storages.values())

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights read per decoded token: the matrices and head, the LoRAs (bf16 in
        quantized models), the per-channel vectors and one embedding row."""
        matrices = sum(m.nbytes for layer in self.layers for m in layer.m.values()) + self.head.nbytes
        small = 0
        for i, layer in enumerate(self.layers):
            for name, tensor in layer.p.items():
                lora = name.startswith("att.") and name[-1] in "12"
                if not (i == 0 and name in ("att.v1", "att.v2")):  # layer 0 mixes no v_first
                    small += tensor.numel() * (2 if lora and self.quant else 4)
        return matrices + small + self.emb.row_bytes + sum(t.numel() * 4 for t in self.ln_out)

    # -- running ---------------------------------------------------------------------------
    def new_state(self) -> RWKVState:
        d = self.dims
        return RWKVState.zeros(d.layers, d.width, d.heads, d.head_size)

    @torch.inference_mode()
    def forward(self, tokens: list[int], state: RWKVState | None = None, use_cache: bool = True
                ) -> tuple[np.ndarray, RWKVState]:
        """Logits (float32 [vocab]) after the last of `tokens`, and the state after them.

        The given state is not modified. Without a state, a cached state of the longest known
        prefix of `tokens` is resumed (see `cache`).
        """
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise EdgewiseError("forward needs at least one token")
        if min(tokens) < 0 or max(tokens) >= self.dims.vocab:
            bad = next(t for t in tokens if not 0 <= t < self.dims.vocab)
            raise EdgewiseError(f"token id {bad} is out of range: the vocabulary has ids 0..{self.dims.vocab - 1}")
        cached, logits = 0, None
        if state is None and use_cache:
            cached, state, logits = self.cache.longest(tokens)
        if state is not None:
            state.check(self.dims.layers, self.dims.width, self.dims.heads, self.dims.head_size)
        decoder = self.decoder()
        if decoder is not None and len(tokens) - cached == 1:  # decode: the fused step, out of place
            after = RWKVState.empty_like(state) if state is not None else self.new_state()
            logits = decoder.step(tokens[-1], state if state is not None else after, after)
            if use_cache and cached < len(tokens):
                self.cache.put(tokens, after, logits)
            return logits, after
        state = self.new_state() if state is None else state.copy()
        for start in range(cached, len(tokens), PREFILL_CHUNK):
            logits = self._run(torch.tensor(tokens[start:start + PREFILL_CHUNK]), state)
        if use_cache and cached < len(tokens):
            self.cache.put(tokens, state, logits)
        return logits, state

    def decoder(self) -> native.Decoder | None:
        """The fused C decode step for this model, or None where it cannot be built."""
        if native.library() is None:   # none built, or inside native.disabled()
            return None
        if self._decoder is False:
            lib = native.library()
            self._decoder = native.Decoder(self, lib) if lib is not None else None
        return self._decoder

    @torch.inference_mode()
    def logits_all(self, tokens: list[int], state: RWKVState | None = None, stepwise: bool = False) -> np.ndarray:
        """Logits after every token, [T, vocab] float32 (for perplexity). `stepwise` feeds the
        tokens one at a time, through the decode path that generation takes, instead of as a
        prefilled sequence."""
        if stepwise:
            rows = []
            for token in tokens:
                logits, state = self.forward([token], state if state is not None else self.new_state(), use_cache=False)
                rows.append(logits)
            return np.stack(rows)
        state = self.new_state() if state is None else state.copy()
        return np.concatenate([self._run(torch.tensor(tokens[start:start + PREFILL_CHUNK]), state, every=True)
                               for start in range(0, len(tokens), PREFILL_CHUNK)])

    @torch.inference_mode()
    def step(self, tokens: list[int], batch: StateBatch, logits: np.ndarray | None = None) -> np.ndarray:
        """One token for each stream of `batch` at once (continuous batching): logits [B, vocab];
        the batch advances in place. Every matrix multiplies all B rows in one pass, so its weights
        are read once per step; a batch of one takes the fused decode step. `logits`: a float32
        [B, vocab] buffer to write them into (the returned array is then that buffer)."""
        tokens = [int(t) for t in tokens]
        if len(tokens) != len(batch):
            raise EdgewiseError(f"step got {len(tokens)} tokens for {len(batch)} streams")
        bad = [t for t in tokens if not 0 <= t < self.dims.vocab]
        if bad:
            raise EdgewiseError(f"token id {bad[0]} is out of range: the vocabulary has ids 0..{self.dims.vocab - 1}")
        decoder = self.decoder()
        if decoder is not None and len(tokens) == 1:   # the decode step, in place: what generate runs
            view = RWKVState(batch.att_prev[0], batch.ffn_prev[0], batch.S[0])
            return decoder.step(tokens[0], view, view, None if logits is None else logits.reshape(-1))[None]
        if decoder is not None:
            return decoder.step_batch(tokens, batch, logits)
        out = self._run(torch.tensor(tokens), _Streams(batch), every=True)
        if logits is None:
            return out
        logits[...] = out
        return logits

    def _run(self, tokens: torch.Tensor, state: RWKVState | _Streams, every: bool = False) -> np.ndarray:
        x = self.emb(tokens)                                               # [T, C]
        state = _Sequence(state) if isinstance(state, RWKVState) else state
        v_first = None
        for i, layer in enumerate(self.layers):
            dx, v_first = self._time_mix(i, layer, x, state, v_first)
            x = x + dx
            x = x + self._channel_mix(i, layer, x, state)
        x = F.layer_norm(x if every else x[-1:], (self.dims.width,), *self.ln_out)
        logits = self.head(x).numpy().astype(np.float32)
        return logits if every else logits[0]

    def _time_mix(self, i: int, layer: _Layer, x: torch.Tensor, state: RWKVState, v_first):
        p, m, (T, C), H, N = layer.p, layer.m, x.shape, self.dims.heads, self.dims.head_size
        xa = F.layer_norm(x, (C,), p["ln1.weight"], p["ln1.bias"])
        prev = state.shift("att_prev", i, xa)                             # token shift
        mixed = xa + (prev - xa) * layer.mix                               # [6, T, C]
        xr, xw, xk, xv, xa_, xg = mixed
        r, k, v = m["att.receptance.weight"](xr), m["att.key.weight"](xk), m["att.value.weight"](xv)
        # bf16 LoRAs (quantized models) multiply in bf16 only where a prefill's GEMM measured bf16
        # fastest: it is emulated, and slow, on CPUs without bf16 dot products
        bf16 = layer.lora_dtype == torch.bfloat16 and T > DEQUANTIZE_ROWS and prefill_gemm(self.quant)[0] == "bf16"
        dtype = torch.bfloat16 if bf16 else torch.float32
        low = torch.bmm(mixed[[1, 4, 3, 5]].to(dtype), layer.lora_in.to(dtype))   # [4, T, D]: w, a, v, g
        low = torch.cat([torch.tanh(low[:1]), low[1:3], torch.sigmoid(low[3:])])
        lw, la, lv, lg = torch.bmm(low, layer.lora_out.to(dtype)).float()  # [4, T, C]
        w = torch.exp(-0.606531 * torch.sigmoid(p["att.w0"] + lw))
        a = torch.sigmoid(p["att.a0"] + la)
        g = lg
        kk = F.normalize((k * p["att.k_k"]).view(T, H, N), dim=-1, eps=1e-12).view(T, C)
        k = k * (1 + (a - 1) * p["att.k_a"])
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(p["att.v0"] + lv)
        y = state.wkv(i, r, w, k, v, kk, a, H, N)                         # [T, C]
        y = F.group_norm(y, H, p["att.ln_x.weight"], p["att.ln_x.bias"], eps=64e-5)
        bonus = (r * k * p["att.r_k"].reshape(-1)).view(T, H, N).sum(-1, keepdim=True) * v.view(T, H, N)
        return m["att.output.weight"]((y + bonus.view(T, C)) * g), v_first

    def _channel_mix(self, i: int, layer: _Layer, x: torch.Tensor, state: RWKVState) -> torch.Tensor:
        p, m = layer.p, layer.m
        xf = F.layer_norm(x, (self.dims.width,), p["ln2.weight"], p["ln2.bias"])
        prev = state.shift("ffn_prev", i, xf)
        hidden = torch.relu(m["ffn.key.weight"](xf + (prev - xf) * p["ffn.x_k"])) ** 2
        return m["ffn.value.weight"](hidden)


class _Sequence:
    """The rows of x are one stream's consecutive tokens: each shifts in the one before it."""

    def __init__(self, state: RWKVState) -> None:
        self.state = state

    def shift(self, name: str, i: int, x: torch.Tensor) -> torch.Tensor:
        kept = getattr(self.state, name)
        prev = torch.cat([kept[i:i + 1], x[:-1]])
        kept[i] = x[-1]
        return prev

    def wkv(self, i: int, r, w, k, v, kk, a, H: int, N: int) -> torch.Tensor:
        return _wkv(self.state.S[i], r, w, k, v, kk, a, H, N)


class _Streams:
    """The rows of x are the next tokens of different streams, each with its own state."""

    def __init__(self, batch: StateBatch) -> None:
        self.batch = batch

    def shift(self, name: str, i: int, x: torch.Tensor) -> torch.Tensor:
        kept = getattr(self.batch, name)[:, i]                              # [B, C]
        prev = kept.clone()
        kept.copy_(x)
        return prev

    def wkv(self, i: int, r, w, k, v, kk, a, H: int, N: int) -> torch.Tensor:
        return torch.cat([_wkv(self.batch.S[b, i], *(t[b:b + 1] for t in (r, w, k, v, kk, a)), H, N)
                          for b in range(len(self.batch))])


def _wkv(S: torch.Tensor, r, w, k, v, kk, a, H: int, N: int) -> torch.Tensor:
    """The WKV-7 recurrence over T tokens; S [H, N, N] is updated in place. Returns y [T, C].
    In C where the kernels are built (heads in parallel, no per-token op dispatch), else here."""
    lib = native.library()
    if lib is not None and S.is_contiguous() and S.dtype == torch.float32:
        return native.wkv(lib, S, r, w, k, v, kk, a)
    T = r.shape[0]
    r_, w_, k_, kk_, b_ = (t.view(T, H, 1, N) for t in (r, w, k, kk, kk * a))   # rows: indexed by key j
    v_ = v.view(T, H, N, 1)                                                       # column: by value i
    ys = []
    for t in range(T):
        # S = S * w - (S kk) b^T + v k^T, elementwise: cheaper than batched matmuls this small
        removed = (S * kk_[t]).sum(-1, keepdim=True)                      # S @ kk, before the decay
        S.mul_(w_[t]).addcmul_(v_[t], k_[t]).addcmul_(removed, b_[t], value=-1.0)
        ys.append((S * r_[t]).sum(-1))                                    # S @ r: [H, N]
    return torch.stack(ys).view(T, H * N)

