"""Does a model fit a device: flash and RAM, region by region, with headroom.

Flash holds the model's weights at their dtypes (as the file stores them) and the runtime's code.
RAM holds the activations alive at their peak (a liveness plan over the graph as it runs: the arena,
one contiguous block), the runtime's own memory and, on a device that loads its weights
(`weights_in = "ram"`), the weights; a device that reads them in place from flash (a microcontroller)
keeps them out of RAM. Each piece must fit in one region: a microcontroller's RAM is several separate
blocks, and an arena larger than the largest does not fit however much RAM there is in total.
An RWKV-7 file: its weights, its recurrent state and one decode step's buffers (no sequence: memory
stays the same however long the context).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgewise.errors import EdgewiseError
from edgewise.targets.profiles import Target

RWKV_SUFFIXES = (".pth", ".safetensors")


@dataclass
class Piece:
    what: str
    bytes: int


@dataclass
class RegionUse:
    memory: str            # "flash" or "ram"
    region: str
    capacity: int
    pieces: list[Piece] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(p.bytes for p in self.pieces)

    @property
    def headroom(self) -> int:
        return self.capacity - self.used


@dataclass
class Fit:
    model: str
    target: str
    fits: bool
    regions: list[RegionUse]
    problems: list[str]          # one line per piece that found no region, with by how much
    figures: dict                # weights, file size, activations, runtime, what the shapes were
    unplaced: list[tuple[str, Piece]] = field(default_factory=list)   # (memory, piece) that found no region

    def used(self, memory: str) -> int:
        """Bytes the model needs in `memory` ("flash" or "ram"): placed in its regions or not."""
        return (sum(p.bytes for r in self.regions if r.memory == memory for p in r.pieces)
                + sum(p.bytes for m, p in self.unplaced if m == memory))

    def to_json(self) -> dict:
        return {"model": self.model, "target": self.target, "fits": self.fits, "problems": self.problems,
                "flash_bytes": self.used("flash"), "ram_bytes": self.used("ram"), "figures": self.figures,
                "unplaced": [{"memory": m, "what": p.what, "bytes": p.bytes} for m, p in self.unplaced],
                "regions": [{"memory": r.memory, "region": r.region, "capacity_bytes": r.capacity,
                             "used_bytes": r.used, "headroom_bytes": r.headroom,
                             "pieces": [{"what": p.what, "bytes": p.bytes} for p in r.pieces]}
                            for r in self.regions if r.pieces or r.memory == "flash"]}


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _place(memory: str, regions, pieces: list[Piece]) -> tuple[list[RegionUse], list[str], list[tuple[str, Piece]]]:
    """First fit, largest piece first, each piece within one region; the pieces that fit none."""
    uses = [RegionUse(memory, r.name, int(r.bytes.value)) for r in regions]
    problems, unplaced = [], []
    for piece in sorted(pieces, key=lambda p: -p.bytes):
        room = sorted(uses, key=lambda u: -u.headroom)
        if piece.bytes <= room[0].headroom:
            room[0].pieces.append(piece)
            continue
        best = room[0]
        used = f", {human(best.used)} of it taken by the {' and '.join(p.what for p in best.pieces)}" if best.pieces else ""
        problems.append(f"{memory}: the {piece.what} needs {human(piece.bytes)} in one block; the roomiest {memory} "
                        f"region, {best.region} ({human(best.capacity)}{used}), is {human(piece.bytes - best.headroom)} "
                        "short")
        unplaced.append((memory, piece))
    return uses, problems, unplaced


def fit(model: str | Path, target: Target) -> Fit:
    """Whether `model` (an ONNX file, an edgewise model folder, or an RWKV-7 file) fits `target`."""
    path = Path(model)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.exists():
        raise EdgewiseError(f"{model}: no such file or folder; give model.onnx, a folder written by edgewise "
                            "compress/optimize, or an RWKV-7 .pth/.safetensors file")
    if path.suffix in RWKV_SUFFIXES:
        weights, figures, ram_pieces = _rwkv(path)
    else:
        weights, figures, ram_pieces = _onnx(path)
    if target.weights_in == "ram":
        ram_pieces.append(Piece("weights", figures.get("weights_as_run_bytes", weights)))
    ram_pieces.append(Piece("runtime memory", int(target.runtime_ram.value)))
    flash_uses, flash_problems, flash_out = _place("flash", target.flash, [Piece("model file (weights)", weights),
                                                                  Piece("runtime code", int(target.runtime_flash.value))])
    ram_uses, ram_problems, ram_out = _place("ram", target.ram, ram_pieces)
    problems = flash_problems + ram_problems
    figures.update({"runtime_flash_bytes": int(target.runtime_flash.value),
                    "runtime_ram_bytes": int(target.runtime_ram.value), "weights_in": target.weights_in})
    return Fit(str(model), target.name, not problems, flash_uses + ram_uses, problems, figures, flash_out + ram_out)


def _onnx(path: Path) -> tuple[int, dict, list[Piece]]:
    from edgewise.targets.graph import analyse

    graph = analyse(path)
    peak, at = graph.live_peak()
    node = graph.nodes[at] if graph.nodes else None
    figures = {"kind": "onnx", "file_bytes": graph.file_bytes, "weights_bytes": graph.file_weights_bytes,
               "weights_as_run_bytes": graph.weight_bytes, "activations_peak_bytes": peak,
               "activations_peak_at": f"{node.op} {node.name}" if node else "",
               "input_shapes": {k: list(v.shape) for k, v in graph.feeds.items()}}
    return graph.file_weights_bytes, figures, [Piece("activations arena", peak)]


def _rwkv(path: Path) -> tuple[int, dict, list[Piece]]:
    from edgewise.rwkv import RWKV

    model = RWKV.load(path)
    d = model.dims
    weights = model.resident_bytes
    state = model.new_state().size_bytes
    step = 4 * (18 * d.width + d.ffn + d.vocab)   # one decode step's buffers and its logits
    figures = {"kind": "rwkv", "file_bytes": path.stat().st_size, "weights_bytes": weights,
               "weights_as_run_bytes": weights, "state_bytes": state, "step_bytes": step,
               "dims": {"layers": d.layers, "width": d.width, "vocab": d.vocab}, "quant": model.quant or "fp32"}
    return weights, figures, [Piece("recurrent state", state), Piece("decode buffers", step)]
