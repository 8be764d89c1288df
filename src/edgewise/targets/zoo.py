"""Models to calibrate and to check the estimator on: families x widths x depths x fp32 / int8 / pruned.

Families differ in what dominates them: an MLP (matrix-vector, bound by reading weights), a CNN
(3x3 convolutions, arithmetic), a MobileNet-like stack (depthwise + pointwise, small kernels and
overheads) and a transformer encoder (matmuls, softmax, layer norms). Random weights: latency does
not depend on their values. int8 is ORT's QDQ static quantization for the convolution families and
dynamic for the others (as edgewise's recipes do), and the convolution families dynamic too (ConvInteger
runs far from QLinearConv); pruned removes half the channels for real.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

FAMILIES = ("mlp", "cnn", "mobile", "transformer")
WIDTHS = {"mlp": (256, 512, 1024), "cnn": (16, 32, 64), "mobile": (32, 64, 128), "transformer": (64, 128, 256)}
DEPTHS = {"mlp": (2, 4), "cnn": (2, 4), "mobile": (2, 4), "transformer": (1, 2)}


@dataclass(frozen=True)
class ZooModel:
    family: str
    name: str
    path: Path


def _module(family: str, width: int, depth: int) -> tuple[nn.Module, np.ndarray]:
    if family == "mlp":
        layers: list[nn.Module] = [nn.Linear(256, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(width, 10)), np.zeros((1, 256), np.float32)
    if family == "cnn":
        layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for i in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()] + ([nn.MaxPool2d(2)] if i % 2 else [])
        return (nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)),
                np.zeros((1, 3, 32, 32), np.float32))
    if family == "mobile":
        layers = [nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1, groups=width), nn.ReLU(), nn.Conv2d(width, width, 1),
                       nn.ReLU()]
        return (nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)),
                np.zeros((1, 3, 64, 64), np.float32))
    if family == "transformer":
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False), np.zeros((1, 32, width), np.float32)
    raise ValueError(family)


def build(folder: str | Path, families=FAMILIES, widths: dict | None = None, depths: dict | None = None,
          variants=("fp32", "int8", "int8-dynamic", "pruned"), progress=None) -> list[ZooModel]:
    """Export every model of the zoo into `folder` (skipping any already there)."""
    from edgewise.compression.prune import structured
    from edgewise.compression.quantize import int8_dynamic, int8_static
    from edgewise.runtime.onnx import export

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for family in families:
        for width in (widths or WIDTHS)[family]:
            for depth in (depths or DEPTHS)[family]:
                torch.manual_seed(width * 10 + depth)
                module, example = _module(family, width, depth)
                module.eval()
                base = f"{family}-w{width}-d{depth}"
                fp32 = folder / f"{base}-fp32.onnx"
                if not fp32.exists():
                    export(module, example, fp32)
                if "fp32" in variants:
                    made.append(ZooModel(family, f"{base}-fp32", fp32))
                if "int8" in variants:
                    int8 = folder / f"{base}-int8.onnx"
                    if not int8.exists():
                        if family in ("cnn", "mobile"):
                            calibration = (np.random.default_rng(0).standard_normal((32, *example.shape[1:]))
                                           .astype(np.float32),)
                            int8_static(fp32, int8, calibration, samples=32)
                        else:
                            int8_dynamic(fp32, int8)
                    made.append(ZooModel(family, f"{base}-int8", int8))
                if "int8-dynamic" in variants and family in ("cnn", "mobile"):   # ConvInteger, not QLinearConv
                    dynamic = folder / f"{base}-int8-dynamic.onnx"
                    if not dynamic.exists():
                        int8_dynamic(fp32, dynamic)
                    made.append(ZooModel(family, f"{base}-int8-dynamic", dynamic))
                if "pruned" in variants and width == (widths or WIDTHS)[family][-1] and family != "transformer":
                    pruned = folder / f"{base}-pruned.onnx"
                    if not pruned.exists():
                        smaller = structured(module, torch.from_numpy(example), 0.5)
                        export(smaller.eval(), example, pruned)
                    made.append(ZooModel(family, f"{base}-pruned", pruned))
                if progress:
                    progress()
    return made


KERNELS = "kernels"   # single layers at a few sizes: calibration material, never a family held out or scored


class _Heads(nn.Module):
    """(1, seq, width) -> (1, heads, seq, width / heads): the reshape and transpose of attention."""

    def forward(self, x):
        return x.reshape(1, x.shape[1], 4, x.shape[2] // 4).transpose(1, 2).contiguous()


def _kernel_modules():
    """(name, module, example input, quantizable) for each single-layer model."""
    for width in (128, 512, 1024):   # matrix-vector
        yield f"linear-m1-w{width}", nn.Linear(width, width), np.zeros((1, width), np.float32), True
    for width in (64, 256):   # matrix products of a sequence
        yield f"linear-m32-w{width}", nn.Linear(width, width), np.zeros((1, 32, width), np.float32), True
    for channels in (16, 32, 64):
        for side in (16, 32):
            yield (f"conv3x3-c{channels}-{side}", nn.Conv2d(channels, channels, 3, padding=1),
                   np.zeros((1, channels, side, side), np.float32), True)
    for channels in (32, 128):
        yield (f"dwconv3x3-c{channels}", nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
               np.zeros((1, channels, 32, 32), np.float32), True)
        yield (f"conv1x1-c{channels}", nn.Conv2d(channels, channels, 1), np.zeros((1, channels, 32, 32), np.float32),
               True)
    for width in (64, 256):
        yield f"layernorm-w{width}", nn.LayerNorm(width), np.zeros((1, 32, width), np.float32), False
        yield f"heads-w{width}", _Heads(), np.zeros((1, 32, width), np.float32), False
    for seq in (32, 64):
        yield f"softmax-s{seq}", nn.Softmax(dim=-1), np.zeros((1, 4, seq, seq), np.float32), False


def kernels(folder: str | Path) -> list[ZooModel]:
    """The single-layer models (fp32; int8 static and dynamic where the layer has weights), exported
    into `folder`: what the estimator learns each kind of kernel from, apart from any family."""
    from edgewise.compression.quantize import int8_dynamic, int8_static
    from edgewise.runtime.onnx import export

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name, module, example, quantizable in _kernel_modules():
        torch.manual_seed(len(name))
        fp32 = folder / f"{KERNELS}-{name}-fp32.onnx"
        if not fp32.exists():
            export(module.eval(), example, fp32)
        made.append(ZooModel(KERNELS, f"{KERNELS}-{name}-fp32", fp32))
        if not quantizable:
            continue
        static, dynamic = folder / f"{KERNELS}-{name}-int8.onnx", folder / f"{KERNELS}-{name}-int8-dynamic.onnx"
        if not static.exists():
            calibration = (np.random.default_rng(0).standard_normal((16, *example.shape[1:])).astype(np.float32),)
            int8_static(fp32, static, calibration, samples=16)
        if not dynamic.exists():
            int8_dynamic(fp32, dynamic)
        made += [ZooModel(KERNELS, f"{KERNELS}-{name}-int8", static),
                 ZooModel(KERNELS, f"{KERNELS}-{name}-int8-dynamic", dynamic)]
    return made
