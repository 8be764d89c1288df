"""The RWKV tests again, with the C kernels built under AddressSanitizer and UBSan (every report
fatal), in a child process that preloads the sanitizer runtime."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A matrix that says it is 8 x 64 but whose buffer holds 4 rows, and claims the bytes of 8: only
# the sanitizer can see the lie. If it does not abort, the kernels were not built instrumented.
CANARY = """
import ctypes, torch
from edgewise.rwkv import native
lib = native.build(native.PORTABLE_FLAGS)
keep = []
m = native.dense(torch.randn(4, 64), keep)
m.rows, m.data_bytes = 8, 8 * 64 * 4
x, y = torch.randn(1, 64), torch.empty(1, 8)
print("not caught", lib.ew_matmul(ctypes.byref(m), x.data_ptr(), x.numel(), 1, y.data_ptr(), y.numel(), 1))
"""


def _sanitized_env(cache: Path) -> dict[str, str]:
    runtimes = [subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
                for name in ("libasan.so", "libstdc++.so.6")]
    if not all(Path(r).is_absolute() and Path(r).exists() for r in runtimes):
        pytest.skip("gcc's libasan is not installed (apt-get install gcc)")
    # libstdc++ preloaded too: ASan's __cxa_throw interceptor needs it (torch.jit throws C++ exceptions).
    return {**os.environ, "EDGEWISE_RWKV_SANITIZE": "1", "LD_PRELOAD": " ".join(runtimes),
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1",
            "EDGEWISE_CACHE_DIR": str(cache), "CC": "gcc"}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_rwkv_tests_pass_with_the_kernels_under_asan_and_ubsan(tmp_path):
    env = _sanitized_env(tmp_path)   # the child's suite builds into its own cache: with the same flags
    canary = subprocess.run([sys.executable, "-c", CANARY], env=env, capture_output=True, text=True, timeout=300)
    assert "AddressSanitizer: heap-buffer-overflow" in canary.stderr and "not caught" not in canary.stdout
    builds = list((tmp_path / "native").glob("*.so"))
    assert builds and all(b"__ubsan_handle" in build.read_bytes() for build in builds)

    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/rwkv",
                           f"--ignore={Path(__file__).relative_to(ROOT)}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    report = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, report
    assert "Sanitizer" not in done.stderr and "runtime error" not in done.stderr, report
    assert " passed" in done.stdout and " failed" not in done.stdout, report
