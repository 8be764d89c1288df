"""What a measurement was taken on: CPU and its instruction sets, cores, memory, library versions."""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from pathlib import Path

import psutil

_LIBRARIES = ("edgewise", "onnxruntime", "onnx", "torch", "numpy")
# The instruction sets that change which kernels run (ONNX Runtime's and edgewise's), as Linux names them.
KERNEL_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                   "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "bf16", "sve")
# What the tests checked int8 accuracy on besides the machine that measured it.
INT8_CHECKED = ("edgewise's tests hold static and dynamic int8 to their accuracy on an emulated Haswell (AVX2 + FMA, "
                "no AVX-512, no VNNI), where ONNX Runtime's integer kernels can saturate: static int8 uses signed "
                "activations (S8S8) so that they do not")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's features as Linux names them (x86 "flags", aarch64 "Features"); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def accuracy_holds_for(recipe: str) -> str:
    """Which CPUs a model's measured accuracy carries over to, from how its recipe computes."""
    here = f"measured on {_cpu_model()} ({', '.join(f for f in KERNEL_FEATURES if f in cpu_flags()) or 'no SIMD flags'})"
    if "int8" in recipe:
        return (f"{here}. Integer kernels differ by CPU: {INT8_CHECKED}. Expect it on x86-64 with AVX2 or newer; "
                "Arm CPUs were not checked")
    return f"{here}. Float arithmetic only (int4 weights are dequantized to float): any CPU, to rounding"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": _cpu_model(),
        "cpu_features": [f for f in KERNEL_FEATURES if f in cpu_flags()],
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
    }
