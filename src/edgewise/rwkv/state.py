"""The recurrent state: constant in size however long the context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgewise.errors import EdgewiseError
from edgewise.files import atomic_path


@dataclass
class RWKVState:
    """Per layer: the previous token's normalised inputs and the WKV matrix, all fp32.

    att_prev, ffn_prev: [L, C]; S: [L, H, N, N] indexed S[layer, head, value i, key j].
    """

    att_prev: torch.Tensor
    ffn_prev: torch.Tensor
    S: torch.Tensor

    @classmethod
    def zeros(cls, layers: int, width: int, heads: int, head_size: int) -> RWKVState:
        return cls(torch.zeros(layers, width), torch.zeros(layers, width),
                   torch.zeros(layers, heads, head_size, head_size))

    @classmethod
    def empty_like(cls, other: RWKVState) -> RWKVState:
        return cls(*(torch.empty(t.shape) for t in (other.att_prev, other.ffn_prev, other.S)))

    def copy(self) -> RWKVState:
        return RWKVState(*(t.float().clone(memory_format=torch.contiguous_format)
                           for t in (self.att_prev, self.ffn_prev, self.S)))

    @property
    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.att_prev, self.ffn_prev, self.S))

    def save(self, path: str | Path) -> Path:
        """Write the state as safetensors, atomically."""
        with atomic_path(path) as tmp:
            save_file({"att_prev": self.att_prev.contiguous(), "ffn_prev": self.ffn_prev.contiguous(),
                       "S": self.S.contiguous()}, str(tmp), metadata={"format": "edgewise-rwkv7-state"})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RWKVState:
        """A state written by `save`; anything else is an EdgewiseError naming the problem."""
        path = Path(path)
        if not path.is_file():
            raise EdgewiseError(f"{path}: no such state file; check the path")
        try:
            tensors = load_file(str(path))
        except Exception as exc:
            raise EdgewiseError(f"{path}: not a saved RWKV state ({str(exc)[:100]})") from None
        if set(tensors) != {"att_prev", "ffn_prev", "S"} or tensors["S"].dim() != 4:
            raise EdgewiseError(f"{path}: not a saved RWKV state (tensors {sorted(tensors)})")
        return cls(*(tensors[k].float().clone() for k in ("att_prev", "ffn_prev", "S")))   # owned, aligned

    def check(self, layers: int, width: int, heads: int, head_size: int) -> None:
        if (tuple(self.S.shape) != (layers, heads, head_size, head_size) or tuple(self.att_prev.shape) != (layers, width)
                or tuple(self.ffn_prev.shape) != (layers, width)):
            raise EdgewiseError(f"the state is for another model shape (S {list(self.S.shape)}); "
                                f"this model has {layers} layers, width {width}")


@dataclass
class StateBatch:
    """The states of several streams of one model, stacked so that one step advances them all
    (continuous batching): att_prev, ffn_prev [B, L, C]; S [B, L, H, N, N], each stream's rows
    contiguous. Streams join and leave between steps; each keeps its row until it leaves."""

    att_prev: torch.Tensor
    ffn_prev: torch.Tensor
    S: torch.Tensor

    @classmethod
    def stack(cls, states: list[RWKVState]) -> StateBatch:
        if not states:
            raise EdgewiseError("a state batch needs at least one state")
        return cls(*(torch.stack([getattr(s, name).float() for s in states]).contiguous()
                     for name in ("att_prev", "ffn_prev", "S")))

    def __len__(self) -> int:
        return self.S.shape[0]

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.att_prev, self.ffn_prev, self.S

    def get(self, b: int) -> RWKVState:
        """Stream b's state, as a copy."""
        return RWKVState(*(t[b].clone() for t in self._tensors()))

    def joined(self, state: RWKVState) -> StateBatch:
        """This batch with `state` as its last row."""
        return StateBatch(*(torch.cat([mine, theirs.float()[None]]) for mine, theirs in
                            zip(self._tensors(), (state.att_prev, state.ffn_prev, state.S))))

    def without(self, rows: list[int]) -> StateBatch | None:
        """This batch less `rows` (None when no row is left)."""
        keep = [b for b in range(len(self)) if b not in set(rows)]
        if not keep:
            return None
        index = torch.tensor(keep)
        return StateBatch(*(t.index_select(0, index).contiguous() for t in self._tensors()))

    @property
    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors())
