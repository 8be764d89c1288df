"""Peak RSS of a process that loads one ONNX model in ONNX Runtime and runs it.

Run as a script (not `-m`), so the measured process imports only numpy and onnxruntime:
    python _rss_probe.py MODEL.onnx INPUTS.npz THREADS CALLS
Prints JSON: {"runtime_rss_mb": RSS before loading the model, "peak_rss_mb": peak overall}.
"""

import json
import resource
import sys

import numpy as np
import onnxruntime as ort


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    # Like memory.own_peak_rss_mb, repeated so that this script imports nothing of edgewise.
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's peak across fork+exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    model, inputs, threads, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    feed = dict(np.load(inputs))
    runtime_rss_mb = _rss_mb()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    for _ in range(calls):
        session.run(None, feed)
    print(json.dumps({"runtime_rss_mb": runtime_rss_mb, "peak_rss_mb": _peak_rss_mb()}))


if __name__ == "__main__":
    main()
