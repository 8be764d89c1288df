"""MiniLM on real text: int8 per-channel and a distilled half-depth student, against ORT fp32
and ORT's own quantize_dynamic default (per-tensor), all measured interleaved in one run.
Fidelity is stated on the example's test documents, which neither training nor early stopping saw.

    python benchmarks/compress_minilm.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from edgewise.compression.candidate import Candidate
from edgewise.compression.quantize import ort_default_dynamic
from edgewise.compression.recipe import compress, measure_candidates
from edgewise.compression.steps import Distill, Int8Dynamic
from edgewise.examples import load_example
from edgewise.measure.bench import BenchSettings
from edgewise.measure.quality import cosine_rows
from edgewise.measure.table import print_figures
from edgewise.runtime import onnx as onnx_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    options = parser.parse_args()
    console = Console(width=160)
    task = load_example("minilm")
    with tempfile.TemporaryDirectory(prefix="edgewise-minilm-") as folder:
        run(console, task, Path(folder), options)


def run(console: Console, task, workdir: Path, options) -> None:
    int8 = compress(task, [Int8Dynamic()], workdir=workdir, measure=False)
    started = time.perf_counter()
    student = compress(task, [Distill(depth=0.5)], workdir=workdir, measure=False)
    train_s = time.perf_counter() - started
    student_int8 = Int8Dynamic().apply(student.final)
    peer_path = ort_default_dynamic(int8.baseline.onnx(), workdir / "ort-quantize-dynamic-default.onnx")
    peer = Candidate(task, workdir, recipe=("ort-quantize_dynamic-default",), onnx_path=peer_path)
    candidates = [int8.baseline, peer, int8.final, student.final, student_int8]
    settings = BenchSettings(batch_sizes=(1,), seconds=options.seconds)
    measure_candidates(candidates, settings, judge=task)
    print_figures([c.figures for c in candidates], settings, "MiniLM, batch 1, 128 tokens: ORT fp32 vs compressed",
                  console)
    reference = task.reference_outputs()
    cosines = {}
    for c in candidates:
        sess = onnx_runtime.session(c.onnx())
        cosines[c.name] = cosine_rows(onnx_runtime.predict(sess, task.eval[0]), reference)
        console.print(f"{c.name:45s} cosine to fp32 on {len(reference)} held-out texts: "
                      f"mean {cosines[c.name].mean():.4f}, min {cosines[c.name].min():.4f}, "
                      f"5th percentile {np.percentile(cosines[c.name], 5):.4f} (validation mean {c.validation_metric:.4f})")
    base_p50 = candidates[0].figures.latency_ms.p50
    speedup = base_p50 / student_int8.figures.latency_ms.p50
    checks = [
        ("int8 per-channel mean cosine >= 0.99", cosines[int8.final.name].mean() >= 0.99,
         f"{cosines[int8.final.name].mean():.4f} (ORT default per-tensor: {cosines[peer.name].mean():.4f})"),
        ("half-depth student + int8 >= 3x faster than ORT fp32 at batch 1", speedup >= 3.0, f"{speedup:.2f}x"),
        ("... with mean held-out cosine >= 0.95", cosines[student_int8.name].mean() >= 0.95,
         f"{cosines[student_int8.name].mean():.4f}"),
        ("... trained within 15 minutes", train_s <= 900, f"{train_s / 60:.1f} min"),
    ]
    for goal, ok, figure in checks:
        console.print(f"{'PASS' if ok else 'FAIL'}  {goal}: {figure}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
