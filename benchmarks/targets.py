"""The latency estimator of `edgewise targets`, checked on the host, leave-one-family-out.

Builds the zoo (edgewise.targets.zoo: 4 families x 3 widths x 2 depths x fp32 / int8, int8 dynamic for
the convolution families, and pruned variants: 66 models), measures each on ONNX Runtime (median latency, every core) and profiles it
node by node. For each family, the estimator is calibrated on the other three families' nodes and
those of the single-layer kernels (zoo.kernels: one linear, convolution, layer norm, softmax or
attention reshape at a few sizes, as nn-Meter learns per-kernel predictors; never scored), and
estimates that family's models; beside it, two naive predictors fitted on the same training models:
latency linear in FLOPs, and linear in parameters. Printed: Spearman rank correlation,
median and 90th-percentile absolute error of each, per family and overall, and the host's own
estimate for the built-in examples (digits, breast-cancer) against their measured latency.

    python benchmarks/targets.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgewise.measure.machine import describe
from edgewise.runtime.onnx import count_params
from edgewise.targets import zoo
from edgewise.targets.calibrate import calibrate, host_machine, load_calibration
from edgewise.targets.estimate import estimate_s, fit_efficiency, profile, spearman


def linear(x_train, y_train, x):
    a, b = np.polyfit(np.asarray(x_train, float), np.asarray(y_train, float), 1)
    return [max(a * v + b, 1e-7) for v in x]


def summary(measured, predicted) -> dict:
    errors = np.abs(np.asarray(predicted) - np.asarray(measured)) / np.asarray(measured)
    return {"spearman": spearman(list(measured), list(predicted)), "median_error": float(np.median(errors)),
            "p90_error": float(np.percentile(errors, 90))}


def host_examples(machine, calibration) -> list[tuple[str, float, float]]:
    """(example, estimated ms, measured ms) on this machine for the built-in examples, with the
    calibration's own efficiencies (the examples are not in the zoo)."""
    from edgewise.load import resolve_targets
    from edgewise.targets.calibrate import efficiency

    found = []
    with tempfile.TemporaryDirectory(prefix="edgewise-examples-") as tmp:
        for name in ("digits", "breast-cancer"):
            [target] = resolve_targets([name], None, Path(tmp))
            nodes, seconds = profile(target.path, runs=20)
            found.append((name, estimate_s(nodes, machine, efficiency(calibration)) * 1e3, seconds * 1e3))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 widths x 1 depth x fp32/int8 (16 models)")
    options = parser.parse_args()
    console = Console(width=150)
    machine_info = describe()
    console.print(f"CPU: {machine_info['cpu']}; ONNX Runtime {machine_info['versions'].get('onnxruntime')}")
    calibration = load_calibration(required=False) or calibrate()
    machine = host_machine(calibration)
    with tempfile.TemporaryDirectory(prefix="edgewise-zoo-") as tmp:
        if options.quick:
            models = zoo.build(tmp, widths={f: (w[0], w[-1]) for f, w in zoo.WIDTHS.items()},
                               depths={f: d[-1:] for f, d in zoo.DEPTHS.items()}, variants=("fp32", "int8", "int8-dynamic"))
        else:
            models = zoo.build(tmp)
        models += zoo.kernels(tmp)   # single layers: learnt from in every fold, never scored
        console.print(f"{len(models)} models; measuring and profiling each ...")
        rows = []
        for m in models:
            nodes, seconds = profile(m.path, runs=10)
            rows.append({"family": m.family, "model": m.name, "nodes": nodes, "measured": seconds,
                         "flops": sum(n.ops for n in nodes), "params": count_params(m.path)})
    for family in zoo.FAMILIES:
        train = [r for r in rows if r["family"] != family]
        test = [r for r in rows if r["family"] == family]
        if not test:
            continue
        efficiency = fit_efficiency([n for r in train for n in r["nodes"]], machine)
        flops = linear([r["flops"] for r in train], [r["measured"] for r in train], [r["flops"] for r in test])
        counts = linear([r["params"] for r in train], [r["measured"] for r in train], [r["params"] for r in test])
        for r, f, p in zip(test, flops, counts):
            r["estimate"], r["flops_linear"], r["params_linear"] = estimate_s(r["nodes"], machine, efficiency), f, p
    table = Table(title="leave-one-family-out on the host: each family estimated from the other three")
    for column in ("predictor", "family", "models", "Spearman", "median |error|", "p90 |error|"):
        table.add_column(column)
    results = {}
    for predictor in ("estimate", "flops_linear", "params_linear"):
        for family in (*zoo.FAMILIES, "all"):
            mine = [r for r in rows if r["family"] != zoo.KERNELS and family in ("all", r["family"])]
            s = summary([r["measured"] for r in mine], [r[predictor] for r in mine])
            results[(predictor, family)] = s
            table.add_row(predictor, family, str(len(mine)), f"{s['spearman']:.3f}", f"{s['median_error']:.0%}",
                          f"{s['p90_error']:.0%}")
    console.print(table)
    detail = Table(title="every model (ms)")
    for column in ("model", "measured", "estimate", "FLOPs-linear", "params-linear"):
        detail.add_column(column)
    for r in rows:
        if r["family"] == zoo.KERNELS:
            continue
        detail.add_row(r["model"], f"{r['measured'] * 1e3:.3f}", f"{r['estimate'] * 1e3:.3f}",
                       f"{r['flops_linear'] * 1e3:.3f}", f"{r['params_linear'] * 1e3:.3f}")
    console.print(detail)
    ours, flops, count = (results[(p, "all")] for p in ("estimate", "flops_linear", "params_linear"))
    scored = sum(r["family"] != zoo.KERNELS for r in rows)
    checks = [
        ("Spearman >= 0.9", ours["spearman"] >= 0.9, f"{ours['spearman']:.3f}"),
        ("median |error| <= 20%", ours["median_error"] <= 0.2, f"{ours['median_error']:.0%}"),
        ("better than FLOPs-linear and params-linear (median |error| and Spearman)",
         ours["median_error"] < min(flops["median_error"], count["median_error"])
         and ours["spearman"] > max(flops["spearman"], count["spearman"]),
         f"{ours['median_error']:.0%} vs {flops['median_error']:.0%} / {count['median_error']:.0%}; "
         f"{ours['spearman']:.3f} vs {flops['spearman']:.3f} / {count['spearman']:.3f}"),
        ("at least 30 models", scored >= 30, str(scored)),
    ]
    examples = host_examples(machine, calibration)
    for name, estimated, measured in examples:
        console.print(f"host, built-in example {name}: estimated {estimated:.3f} ms, measured {measured:.3f} ms "
                      f"({estimated / measured - 1:+.0%})")
    for name, ok, value in checks:
        console.print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
    print(json.dumps({f"{p}/{f}": v for (p, f), v in results.items()}))


if __name__ == "__main__":
    main()
