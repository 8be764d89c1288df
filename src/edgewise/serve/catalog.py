"""What MODELS_DIR holds: each entry is a model, its id the entry's name.

- a folder written by `edgewise compress` / `optimize` (model.onnx + card.json): a text encoder when
  it carries tokenizer.json (served on /v1/embeddings and KServe v2), any other ONNX model on KServe v2;
- an RWKV-7 file (.pth, .safetensors, or one converted by `edgewise rwkv convert`): /v1/completions
  and /v1/chat/completions.

Ids are looked up in this listing, never joined onto a path: a request cannot name a file outside
MODELS_DIR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgewise.errors import EdgewiseError

RWKV_SUFFIXES = (".pth", ".safetensors")
KINDS = ("rwkv", "embedding", "onnx")


@dataclass(frozen=True)
class ModelFile:
    id: str
    path: Path
    kind: str            # one of KINDS

    @property
    def file_bytes(self) -> int:
        if self.path.is_dir():
            return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        return self.path.stat().st_size

    @property
    def card(self) -> dict:
        card = self.path / "card.json"
        if self.path.is_dir() and card.is_file():
            try:
                return json.loads(card.read_text())
            except (OSError, ValueError):
                return {}
        return {}


def _kind(entry: Path) -> str | None:
    if entry.name.startswith("."):
        return None
    if entry.is_dir():
        if not (entry / "model.onnx").is_file():
            return None
        return "embedding" if (entry / "tokenizer.json").is_file() else "onnx"
    if entry.is_file() and entry.suffix in RWKV_SUFFIXES:
        return "rwkv"
    return None


def scan(models_dir: str | Path) -> dict[str, ModelFile]:
    """Every servable entry of `models_dir` by id; a missing or empty folder is an EdgewiseError."""
    root = Path(models_dir)
    if not root.is_dir():
        raise EdgewiseError(f"{root}: no such folder; give the folder that holds the models to serve")
    found = {}
    for entry in sorted(root.iterdir()):
        kind = _kind(entry)
        if kind is not None:
            model_id = entry.stem if kind == "rwkv" else entry.name
            found.setdefault(model_id, ModelFile(model_id, entry.resolve(), kind))
    if not found:
        raise EdgewiseError(f"{root}: nothing to serve; put folders written by `edgewise compress` (model.onnx) "
                            "or RWKV-7 files (.pth, .safetensors) in it")
    return found
