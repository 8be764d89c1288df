"""The aarch64 kernels (NEON with sdot, and portable), cross-compiled and run under qemu-aarch64:
the same deterministic model and matrices as an x86 build of tests/rwkv/kernel_check.c, whose
kernels test_native.py holds to the torch oracle. Debian's gcc-aarch64-linux-gnu and qemu-user
(installed by `make test-deps`) are needed; without them the test skips and says so."""

import runpy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
SETUP = runpy.run_path(str(HERE.parents[1] / "setup.py"), run_name="setup")
CROSS, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"


def _run(compiler: str, flags: list[str], out: Path, emulate: bool) -> dict:
    subprocess.run([compiler, *SETUP["COMMON"], *flags, str(HERE / "kernel_check.c"), "-o", str(out), "-lm"],
                   check=True)
    command = [QEMU, "-L", "/usr/aarch64-linux-gnu", str(out)] if emulate else [str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    lines = [line.split() for line in done.stdout.splitlines()]
    return {tuple(parts[:2]): np.array(parts[2:], dtype=np.float64) for parts in lines}


@pytest.mark.skipif(not (shutil.which(CROSS) and shutil.which(QEMU) and shutil.which("gcc")),
                    reason="needs gcc-aarch64-linux-gnu and qemu-user (make test-deps installs them)")
@pytest.mark.parametrize("variant", ["neon", "portable"])
def test_aarch64_kernels_match_the_x86_build(tmp_path, variant):
    # the scalar x86 build: fp32 activations throughout
    host = _run("gcc", ["-DEW_SCALAR"], tmp_path / "host", emulate=False)
    arm = _run(CROSS, SETUP["VARIANTS"]["aarch64"][variant], tmp_path / variant, emulate=True)
    assert ("features", str(8 if variant == "neon" else 0)) in arm   # the NEON kernels did run
    assert set(arm) - {("features", "8"), ("features", "0")} == set(host) - {("features", "0")}
    for (what, kind), want in host.items():
        if what == "features":
            continue
        got = arm[(what, kind)]
        assert np.isfinite(got).all() and got.shape == want.shape
        if kind == "int4" and variant == "neon":   # int8 activations (sdot) against fp32 ones
            assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) > 0.999
            assert np.argmax(got) == np.argmax(want)
        else:
            assert np.abs(got - want).max() / np.abs(want).max() < 1e-5, (what, kind)
