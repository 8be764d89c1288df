"""Peak memory of the deployed model, measured in a fresh process so nothing else is counted."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_PROBE = Path(__file__).with_name("_rss_probe.py")


def own_peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def peak_rss_mb(model_path: str | Path, feed: dict[str, np.ndarray], threads: int, calls: int = 5) -> dict:
    """Peak RSS (MB) of a process running `model_path` on `feed` in ONNX Runtime.

    Returns `{"peak_rss_mb": ..., "runtime_rss_mb": ...}`; the second is the process before the
    model was loaded (Python + numpy + onnxruntime), so the difference is the model's own.
    """
    with tempfile.TemporaryDirectory(prefix="edgewise-rss-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **feed)
        result = subprocess.run([sys.executable, str(_PROBE), str(model_path), str(inputs), str(threads), str(calls)],
                                capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout)
