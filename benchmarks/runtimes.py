"""torch fp32 eager vs torch bf16 vs edgewise's ONNX Runtime path, per built-in example.

All three run interleaved in one process at batch 1 and 32, so machine noise hits them alike;
ratios are against torch fp32 eager and against ORT fp32 (the honest baseline for later speedups).

    python benchmarks/runtimes.py [--examples digits,breast-cancer,minilm] [--seconds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from edgewise.examples import load_example
from edgewise.measure.latency import interleaved
from edgewise.runtime import onnx as onnx_runtime
from edgewise.runtime.torch import as_torch_call


def torch_runner(model: torch.nn.Module, inputs, dtype: torch.dtype):
    model = copy.deepcopy(model).to(dtype).eval()
    args, kwargs = as_torch_call(inputs)
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    args, kwargs = tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    def run():
        with torch.inference_mode():
            model(*args, **kwargs)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default="digits,breast-cancer,minilm")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    table = Table(title=f"latency p50 (ms), {options.threads} threads, interleaved in one run", title_justify="left")
    for column in ("example", "batch", "torch fp32", "torch bf16", "edgewise ORT fp32",
                   "ORT speedup vs torch fp32", "ORT speedup vs torch bf16"):
        table.add_column(column, justify="left" if column == "example" else "right")
    with tempfile.TemporaryDirectory() as workdir:
        for name in options.examples.split(","):
            task = load_example(name)
            path, error = onnx_runtime.export_task(task, Path(workdir) / f"{name}.onnx")
            sess = onnx_runtime.session(path, options.threads)
            for batch in (int(b) for b in options.batches.split(",")):
                inputs = task.sample_input(batch)
                feed = onnx_runtime.feed(sess, inputs)
                runners = [torch_runner(task.model, inputs, torch.float32),
                           torch_runner(task.model, inputs, torch.bfloat16),
                           lambda sess=sess, feed=feed: sess.run(None, feed)]
                p50 = [t.percentiles_ms().p50 for t in interleaved(runners, seconds=options.seconds)]
                table.add_row(name, str(batch), *(f"{v:.3f}" for v in p50),
                              f"{p50[0] / p50[2]:.2f}x", f"{p50[1] / p50[2]:.2f}x")
            Console().print(f"{name}: ORT vs torch max abs error {error:.2e}")
    Console(width=160).print(table)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
