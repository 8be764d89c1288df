"""The RWKV kernel tests again, with each kernel variant this CPU runs built under AddressSanitizer
and UBSan (every report fatal), in a child process that preloads the sanitizer runtime."""

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgewise.rwkv import native

ROOT = Path(__file__).resolve().parents[2]
SETUP = runpy.run_path(str(ROOT / "setup.py"), run_name="setup")   # the variants' flags, as installed
FLAGS = {**{name: flags for arch in SETUP["VARIANTS"].values() for name, flags in arch.items()}, "portable": []}
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
TESTS = ["tests/rwkv/test_native.py", "tests/rwkv/test_runtime.py", "tests/rwkv/test_converted.py",
         "tests/rwkv/test_cli.py"]

# A matrix that says it is 8 x 64 but whose buffer holds 4 rows, and claims the bytes of 8: only
# the sanitizer can see the lie. If it does not abort, the kernels were not built instrumented.
CANARY = """
import ctypes, os, torch
from edgewise.rwkv import native
lib, keep = native.load(os.environ["EDGEWISE_KERNELS_LIB"]), []
m = native.dense(torch.randn(4, 64), keep)
m.rows, m.data_bytes = 8, 8 * 64 * 4
x, y = torch.randn(1, 64), torch.empty(1, 8)
print("not caught", lib.ew_matmul(ctypes.byref(m), x.data_ptr(), x.numel(), 1, y.data_ptr(), y.numel(), 1))
"""


def _sanitized_env(library: Path) -> dict[str, str]:
    runtimes = [subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
                for name in ("libasan.so", "libstdc++.so.6")]
    if not all(Path(r).is_absolute() and Path(r).exists() for r in runtimes):
        pytest.skip("gcc's libasan is not installed (apt-get install gcc)")
    # libstdc++ preloaded too: ASan's __cxa_throw interceptor needs it (torch.jit throws C++ exceptions).
    return {**os.environ, "EDGEWISE_KERNELS_LIB": str(library), "LD_PRELOAD": " ".join(runtimes),
            "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("variant", native.runnable())
def test_rwkv_kernels_pass_their_tests_under_asan_and_ubsan(tmp_path, variant):
    library = tmp_path / f"{variant}-sanitized.so"
    subprocess.run(["gcc", *SETUP["COMMON"], *FLAGS[variant], *SANITIZE, "-fPIC", "-shared", str(native.SOURCE),
                    "-o", str(library), "-lm"], check=True)
    env = _sanitized_env(library)
    canary = subprocess.run([sys.executable, "-c", CANARY], env=env, capture_output=True, text=True, timeout=300)
    assert "AddressSanitizer: heap-buffer-overflow" in canary.stderr and "not caught" not in canary.stdout
    assert b"__ubsan_handle" in library.read_bytes()

    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    report = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, report
    assert "Sanitizer" not in done.stderr and "runtime error" not in done.stderr, report
    assert " passed" in done.stdout and " failed" not in done.stdout, report
