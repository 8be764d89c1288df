"""The fast RWKV-7 runtime: torch on the CPU, large matrices fp32, int8 or int4, state fp32.

A prompt is prefilled as a sequence: every matmul runs over all its tokens at once and only
the WKV recurrence steps token by token. Tested against `reference.py`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from edgewise.errors import EdgewiseError
from edgewise.files import atomic_path
from edgewise.rwkv import checkpoint
from edgewise.rwkv.checkpoint import MATRICES, Dims
from edgewise.rwkv.quant import Matrix, from_tensors, quantize
from edgewise.rwkv.state import RWKVState

CONVERTED_FORMAT = "edgewise-rwkv7"
PREFILL_CHUNK = 512  # tokens per prefill pass: bounds activation memory for long prompts
_MIX = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
_SMALL = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.w0", "att.w1", "att.w2", "att.a0", "att.a1",
          "att.a2", "att.v0", "att.v1", "att.v2", "att.g1", "att.g2", "att.k_k", "att.k_a", "att.r_k",
          "att.ln_x.weight", "att.ln_x.bias", "ffn.x_k") + tuple(f"att.{m}" for m in _MIX)


@dataclass
class _Layer:
    p: dict[str, torch.Tensor]      # small fp32 tensors, [C] or LoRA [C, D] / [D, C]
    mix: torch.Tensor               # [6, 1, C]: x_r, x_w, x_k, x_v, x_a, x_g
    m: dict[str, Matrix]            # R K V O FK FV


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

    def __init__(self, dims: Dims, emb: torch.Tensor, layers: list[_Layer], ln_out: tuple[torch.Tensor, torch.Tensor],
                 head: Matrix, quant: str | None) -> None:
        self.dims, self.emb, self.layers, self.ln_out, self.head, self.quant = dims, emb, layers, ln_out, head, quant
        self.cache = PrefixCache()

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, quant: str | None = None) -> RWKV:
        """An official x070 checkpoint (.pth or .safetensors), quantized on the way in, or a file
        written by `save` (already quantized: `quant` must be None or match)."""
        if quant not in (None, "fp32", "int8", "int4"):
            raise EdgewiseError(f"quant {quant!r}: use int8 or int4 (or none for fp32)")
        quant = None if quant == "fp32" else quant
        path = Path(path)
        converted = _converted_metadata(path)
        if converted is not None:
            return cls._load_converted(path, converted, quant)
        weights, dims = checkpoint.load(path)
        emb = F.layer_norm(weights["emb.weight"].float(), (dims.width,), weights["blocks.0.ln0.weight"].float(),
                           weights["blocks.0.ln0.bias"].float())  # LN0 folded into the table once
        layers = []
        for i in range(dims.layers):
            b = f"blocks.{i}."
            p = {name: weights[b + name].float().reshape(-1) if weights[b + name].dim() != 2 or name == "att.r_k"
                 else weights[b + name].float() for name in _SMALL if b + name in weights}
            matrices = {name: quantize(weights[b + name], quant) for name in MATRICES}
            layers.append(_Layer(p, torch.stack([p[f"att.{m}"] for m in _MIX])[:, None, :], matrices))
        ln_out = (weights["ln_out.weight"].float(), weights["ln_out.bias"].float())
        head = quantize(weights["head.weight"], quant)
        return cls(dims, emb.to(torch.bfloat16) if quant else emb, layers, ln_out, head, quant)

    @classmethod
    def _load_converted(cls, path: Path, meta: dict, quant: str | None) -> RWKV:
        stored = meta.get("quant") or None
        if quant is not None and quant != stored:
            raise EdgewiseError(f"{path} is already converted to {stored or 'fp32'}; load it without --quant "
                                f"or convert the original checkpoint to {quant}")
        dims = Dims(**{k: int(meta[k]) for k in ("layers", "width", "heads", "head_size", "vocab", "ffn")})
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        layers = []
        for i in range(dims.layers):
            b = f"blocks.{i}."
            p = {name: tensors[b + name] for name in _SMALL if b + name in tensors}
            matrices = {name: from_tensors(tensors, b + name) for name in MATRICES}
            layers.append(_Layer(p, torch.stack([p[f"att.{m}"] for m in _MIX])[:, None, :], matrices))
        return cls(dims, tensors["emb.folded"], layers, (tensors["ln_out.weight"], tensors["ln_out.bias"]),
                   from_tensors(tensors, "head.weight"), stored)

    def save(self, path: str | Path) -> Path:
        """Write this model (quantized as loaded) as safetensors that `load` memory-maps back."""
        tensors = {"emb.folded": self.emb, "ln_out.weight": self.ln_out[0], "ln_out.bias": self.ln_out[1],
                   **self.head.tensors("head.weight")}
        for i, layer in enumerate(self.layers):
            tensors.update({f"blocks.{i}.{k}": v for k, v in layer.p.items()})
            for name, matrix in layer.m.items():
                tensors.update(matrix.tensors(f"blocks.{i}.{name}"))
        meta = {"format": CONVERTED_FORMAT, "quant": self.quant or "", **{k: str(v) for k, v in vars(self.dims).items()}}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        return Path(path)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights streamed per decoded token (matrices and head; one embedding row)."""
        matrices = sum(m.nbytes for layer in self.layers for m in layer.m.values()) + self.head.nbytes
        return matrices + self.dims.width * self.emb.element_size()

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
        state = self.new_state() if state is None else state.copy()
        state.check(self.dims.layers, self.dims.width, self.dims.heads, self.dims.head_size)
        for start in range(cached, len(tokens), PREFILL_CHUNK):
            logits = self._run(torch.tensor(tokens[start:start + PREFILL_CHUNK]), state)
        if use_cache and cached < len(tokens):
            self.cache.put(tokens, state, logits)
        return logits, state

    @torch.inference_mode()
    def logits_all(self, tokens: list[int], state: RWKVState | None = None) -> np.ndarray:
        """Logits after every token, [T, vocab] float32 (for perplexity)."""
        state = self.new_state() if state is None else state.copy()
        return np.concatenate([self._run(torch.tensor(tokens[start:start + PREFILL_CHUNK]), state, every=True)
                               for start in range(0, len(tokens), PREFILL_CHUNK)])

    def _run(self, tokens: torch.Tensor, state: RWKVState, every: bool = False) -> np.ndarray:
        x = self.emb[tokens].float()                                       # [T, C]
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
        prev = torch.cat([state.att_prev[i:i + 1], xa[:-1]])             # token shift
        state.att_prev[i] = xa[-1]
        xr, xw, xk, xv, xa_, xg = xa + (prev - xa) * layer.mix            # [6, T, C]
        r, k, v = m["att.receptance.weight"](xr), m["att.key.weight"](xk), m["att.value.weight"](xv)
        w = torch.exp(-0.606531 * torch.sigmoid(p["att.w0"] + torch.tanh(xw @ p["att.w1"]) @ p["att.w2"]))
        a = torch.sigmoid(p["att.a0"] + (xa_ @ p["att.a1"]) @ p["att.a2"])
        g = torch.sigmoid(xg @ p["att.g1"]) @ p["att.g2"]
        kk = F.normalize((k * p["att.k_k"]).view(T, H, N), dim=-1, eps=1e-12).view(T, C)
        k = k * (1 + (a - 1) * p["att.k_a"])
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(p["att.v0"] + (xv @ p["att.v1"]) @ p["att.v2"])
        y = _wkv(state.S[i], r, w, k, v, kk, a, H, N)                      # [T, C]
        y = F.group_norm(y, H, p["att.ln_x.weight"], p["att.ln_x.bias"], eps=64e-5)
        bonus = (r * k * p["att.r_k"].reshape(-1)).view(T, H, N).sum(-1, keepdim=True) * v.view(T, H, N)
        return m["att.output.weight"]((y + bonus.view(T, C)) * g), v_first

    def _channel_mix(self, i: int, layer: _Layer, x: torch.Tensor, state: RWKVState) -> torch.Tensor:
        p, m = layer.p, layer.m
        xf = F.layer_norm(x, (self.dims.width,), p["ln2.weight"], p["ln2.bias"])
        prev = torch.cat([state.ffn_prev[i:i + 1], xf[:-1]])
        state.ffn_prev[i] = xf[-1]
        hidden = torch.relu(m["ffn.key.weight"](xf + (prev - xf) * p["ffn.x_k"])) ** 2
        return m["ffn.value.weight"](hidden)


def _wkv(S: torch.Tensor, r, w, k, v, kk, a, H: int, N: int) -> torch.Tensor:
    """The WKV-7 recurrence over T tokens; S [H, N, N] is updated in place. Returns y [T, C]."""
    T = r.shape[0]
    r_, w_, k_, v_ = (t.view(T, H, N, 1) for t in (r, w, k, v))
    kk_, b_ = kk.view(T, H, N, 1), (kk * a).view(T, H, 1, N)
    ys = []
    for t in range(T):
        # S = S * w[key] - (S @ kk) b^T + v k^T, with S @ kk taken before the decay
        removed = (S @ kk_[t]) @ b_[t]
        S.mul_(w_[t].transpose(1, 2)).sub_(removed).add_(v_[t] @ k_[t].transpose(1, 2))
        ys.append(S @ r_[t])                                               # [H, N, 1]
    return torch.stack(ys).view(T, H * N)


def _converted_metadata(path: Path) -> dict | None:
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None  # not readable as safetensors: checkpoint.load reports it
    return meta if meta.get("format") == CONVERTED_FORMAT else None
