"""Part 2 on digits: structured pruning and int8 static, measured against ONNX Runtime fp32.

Prints accuracy (points), parameters removed and batch-1 latency ratios, all candidates
measured interleaved in one run, and whether each goal of the issue holds.

    python benchmarks/compress_digits.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from edgewise.compression.recipe import compress, measure_candidates
from edgewise.compression.steps import Int8, Prune
from edgewise.examples import load_example
from edgewise.measure.bench import BenchSettings
from edgewise.measure.table import print_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    options = parser.parse_args()
    console = Console(width=160)
    task = load_example("digits")
    started = time.perf_counter()
    pruned = compress(task, [Prune(0.5, kind="structured", steps=3, finetune_epochs=3), Int8()], measure=False)
    int8_only = compress(task, [Int8()], measure=False)
    elapsed = time.perf_counter() - started
    candidates = [pruned.baseline, pruned.steps[0], int8_only.final, pruned.final]
    settings = BenchSettings(batch_sizes=(1,), seconds=options.seconds)
    measure_candidates(candidates, settings, judge=task)
    print_figures([c.figures for c in candidates], settings, "digits: ORT fp32 baseline vs compressed", console)
    base, prune_c, int8_c = candidates[0].figures, candidates[1].figures, candidates[2].figures
    points = lambda f: (base.metric.value - f.metric.value) * 100  # noqa: E731
    removed = 1 - prune_c.params / base.params
    checks = [
        ("structured prune removes >= 50% of parameters", removed >= 0.5, f"{removed:.1%}"),
        ("... with <= 1 point accuracy drop", points(prune_c) <= 1.0, f"{points(prune_c):+.2f} points"),
        ("... and lower batch-1 ORT latency than unpruned", prune_c.latency_ms.p50 < base.latency_ms.p50,
         f"{base.latency_ms.p50 / prune_c.latency_ms.p50:.2f}x faster"),
        ("int8 static drops <= 0.5 point", points(int8_c) <= 0.5, f"{points(int8_c):+.2f} points"),
    ]
    for goal, ok, figure in checks:
        console.print(f"{'PASS' if ok else 'FAIL'}  {goal}: {figure}")
    console.print(f"compression (prune with fine-tuning, quantization) took {elapsed:.0f} s")


if __name__ == "__main__":
    main()
