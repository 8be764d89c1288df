"""PyTorch as the reference runtime: run a module on edgewise inputs, load weights safely."""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgewise.data import Inputs, concat, num_samples, take
from edgewise.errors import EdgewiseError


def as_torch_call(inputs: Inputs) -> tuple[tuple, dict]:
    """Positional and keyword arguments for `model(*args, **kwargs)` from numpy inputs."""
    if isinstance(inputs, Mapping):
        return (), {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs), {}
    return (torch.from_numpy(np.ascontiguousarray(inputs)),), {}


def first_tensor(output: Any) -> torch.Tensor:
    """The primary output of a forward call: a tensor, the first of a tuple, or of a ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return first_tensor(next(iter(output.values())))
    if isinstance(output, (tuple, list)) and output:
        return first_tensor(output[0])
    raise TypeError(f"model returned {type(output).__name__}, expected a tensor")


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: Inputs, batch_size: int = 64,
            dtype: torch.dtype | None = None) -> np.ndarray:
    """Primary output of `model` on `inputs`, batched, as float32 numpy.

    Args:
        dtype: run under CPU autocast to this dtype (e.g. torch.bfloat16).
    """
    model.eval()
    outputs = []
    for start in range(0, num_samples(inputs), batch_size):
        args, kwargs = as_torch_call(take(inputs, slice(start, start + batch_size)))
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            outputs.append(first_tensor(model(*args, **kwargs)).float().numpy())
    return concat(outputs)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:120]


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a `.pt`/`.pth` state dict, never executing code.

    The format is read from the file's first bytes, not its name. `.pt` files are read with
    `torch.load(weights_only=True)`: a pickle that carries code or whole objects is refused with
    an EdgewiseError.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgewiseError(f"{path}: no such file; check the path")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors.torch import load_file
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise EdgewiseError(f"{path}: not a valid safetensors file ({_first_line(exc)}); re-save it") from None
        # A header padded to an odd length leaves tensors at odd addresses; some kernels (torch's
        # int8/int4 ones, the RWKV C step) silently misread those: copy them to aligned memory.
        return {k: t.clone() if t.data_ptr() % t.element_size() else t for k, t in tensors.items()}
    try:
        zipped = zipfile.is_zipfile(path)
    except zipfile.BadZipFile as exc:   # is_zipfile itself raises on some damaged end records
        raise EdgewiseError(f"{path}: not a readable PyTorch weights file ({_first_line(exc)}); "
                            "re-save it with torch.save(model.state_dict(), path)") from None
    with open(path, "rb") as f:
        if not zipped and f.read(1) != b"\x80":   # neither torch's zip format nor a pickle
            raise EdgewiseError(f"{path}: not a readable PyTorch weights file (neither torch's zip format nor a "
                                "pickle); check the file")
    try:
        # mmap needs the zip format of torch.save; legacy files are read whole.
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: one line only
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        reason = f"it references {found.group(1)}" if found else "it holds objects or code"
        raise EdgewiseError(
            f"{path}: refused to unpickle it, it holds more than weights ({reason}); "
            "save a state_dict (torch.save(model.state_dict(), path)) or a .safetensors file") from None
    except Exception as exc:  # corrupt data fails in zipfile, the restricted unpickler or torch, each its own way
        raise EdgewiseError(f"{path}: not a readable PyTorch weights file ({_first_line(exc)}); "
                            "re-save it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgewiseError(f"{path}: expected a dict of tensors (a state_dict); save model.state_dict()")
    return dict(state)


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file opens with its header's length (8 bytes, little-endian) and a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size


def load_state(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load weights from `path` into `model`, naming missing or misshapen tensors on failure."""
    state = load_weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise EdgewiseError(f"{path}: weights do not fit the model ({detail}); "
                            "save them from the same architecture") from None
    return model
