"""Builds the RWKV decode kernels at install: one shared library per instruction set of the
architecture being built for, every one in the same package; `edgewise.rwkv.native` picks the best
the CPU runs at load time. Nothing compiles at run time.

Each library is a Python extension module only so that setuptools builds, names and installs it
(an empty module: see _kernels_*.c); Python calls into it through ctypes. Each is optional:
where there is no compiler, or the compiler refuses a variant's flags, the install goes on without
it, and the runtime decodes on torch and says so once.

Why setuptools `Extension` and not scikit-build-core or meson-python: the package already builds with
setuptools, the kernels are one C file compiled with a few flag sets, and `optional=True` gives the
"install anyway" behaviour directly; a CMake or meson project would add a build dependency for no gain.
"""

import hashlib
import platform
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
SOURCE = HERE / "src" / "edgewise" / "rwkv" / "_decode.c"
COMMON = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-std=gnu11"]
# The flags of each variant, by the architecture of the build. A variant's file includes _decode.c.
VARIANTS = {
    "x86_64": {
        "avx512": ["-march=x86-64-v4", "-mavx512vnni"],   # AVX-512 F/BW/DQ/VL + VNNI
        "avx2": ["-march=x86-64-v3"],                    # AVX2, FMA, F16C, BMI2
        "portable": ["-march=x86-64-v2"],                                # SSSE3, SSE4.1/4.2, POPCNT
    },
    "aarch64": {
        "neon": ["-march=armv8.2-a+dotprod"],   # NEON with sdot/udot (Cortex-A55/A76 and later)
        "portable": ["-march=armv8-a"],
    },
}


def kernels() -> list[Extension]:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]   # native.py compares: a stale build is named
    return [Extension(f"edgewise.rwkv._kernels_{name}", [f"src/edgewise/rwkv/_kernels_{name}.c"],
                      extra_compile_args=COMMON + flags, extra_link_args=["-fopenmp"], depends=[str(SOURCE)],
                      define_macros=[("EW_SOURCE_HASH", f'"{digest}"')],
                      optional=True)
            for name, flags in VARIANTS.get(machine, {"portable": []}).items()]


if __name__ == "__main__":   # as setuptools runs it; the tests read VARIANTS and COMMON
    setup(ext_modules=kernels())
