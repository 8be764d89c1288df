"""`edgewise targets ...`: list, show, fit, estimate, calibrate."""

from __future__ import annotations

import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Devices you may not own: profiles, fit check, latency and energy estimates.")

TargetOption = Annotated[str, typer.Option("--target", help="A profile's name (`edgewise targets list`) or host.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


@contextmanager
def _model_path(spec: str):
    """The file a MODEL argument names: a path as given, or a built-in example's model, exported."""
    from edgewise.examples import EXAMPLES

    path = Path(spec)
    if spec in EXAMPLES and not path.exists():
        from edgewise.load import resolve_targets

        with tempfile.TemporaryDirectory(prefix="edgewise-targets-") as tmp:
            yield resolve_targets([spec], None, Path(tmp))[0].path
        return
    yield path


def _human(n: float) -> str:
    from edgewise.targets.fit import human

    return human(n)


@app.command("list")
def list_targets(as_json: AsJson = False) -> None:
    """The device profiles (and host, once calibrated), a line each."""
    from rich.console import Console
    from rich.table import Table

    from edgewise.targets.calibrate import load_calibration
    from edgewise.targets.profiles import all_profiles, load

    targets = all_profiles() + ([load("host")] if load_calibration(required=False) else [])
    if as_json:
        print(json.dumps([t.to_json() for t in targets], indent=2))
        return
    table = Table(title="edgewise targets (every number's kind and source: edgewise targets show NAME)")
    for column in ("name", "class", "device", "RAM (largest block)", "flash", "fp32 / int8 GOP/s", "GB/s", "runtime"):
        table.add_column(column)
    for t in targets:
        largest = max(r.bytes.value for r in t.ram)
        total = sum(r.bytes.value for r in t.ram)
        ram = _human(total) + (f" ({_human(largest)})" if len(t.ram) > 1 else "")
        table.add_row(t.name, t.device_class, t.title, ram, _human(max(r.bytes.value for r in t.flash)),
                      f"{t.peak_gops_fp32.value:g} / {t.peak_gops_int8.value:g}", f"{t.bandwidth_gbs.value:g}",
                      " + ".join((t.runtime, *t.exports)))
    Console(width=200).print(table)
    if not load_calibration(required=False):
        print("host: not calibrated yet (edgewise targets calibrate)")


@app.command()
def show(name: Annotated[str, typer.Argument(help="A profile's name or host.")], as_json: AsJson = False) -> None:
    """Every figure of one target, with its kind (vendor, derived, measured) and its source."""
    from edgewise.targets.profiles import NUMBERS, load

    t = load(name)
    if as_json:
        print(json.dumps(t.to_json(), indent=2))
        return
    print(f"{t.name}: {t.title}")
    print(f"  class {t.device_class}, {t.arch}, runtime {t.runtime}"
          + (f" (edgewise also exports to {', '.join(t.exports)}: --export)" if t.exports else "")
          + f", weights kept in {t.weights_in}, "
          f"dtypes {', '.join(t.dtypes)}" + (f", also known as {', '.join(t.aliases)}" if t.aliases else ""))
    for n in NUMBERS:
        f = getattr(t, n)
        value = _human(f.value) if n == "cache_bytes" else f"{f.value:g}"
        print(f"  {n:15s} {value:>12}  [{f.kind}] {f.source}")
    for memory, regions in (("ram", t.ram), ("flash", t.flash)):
        for r in regions:
            print(f"  {memory} {r.name:22s} {_human(r.bytes.value):>10}  [{r.bytes.kind}] {r.bytes.source}")
    for label, f in (("runtime code", t.runtime_flash), ("runtime memory", t.runtime_ram)):
        print(f"  {label:15s} {_human(f.value):>12}  [{f.kind}] {f.source}")


@app.command()
def fit(
    model: Annotated[str, typer.Argument(help="model.onnx, a folder written by compress/optimize, an RWKV-7 file, or an example (digits, minilm, ...).")],
    target: TargetOption,
    as_json: AsJson = False,
) -> None:
    """Does the model fit the device: flash and RAM, region by region, with headroom.

    Exit code 0 when it fits, 1 when it does not (2: bad input).
    """
    from edgewise.targets.fit import fit as run_fit
    from edgewise.targets.profiles import load

    chosen = load(target)
    with _model_path(model) as path:
        result = run_fit(path, chosen)
        result.model = model
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_fit(result)
    if not result.fits:
        raise typer.Exit(1)


def _print_fit(result) -> None:
    f = result.figures
    print(f"{result.model} on {result.target}: {'fits' if result.fits else 'DOES NOT FIT'}")
    if f["kind"] == "onnx":
        print(f"  weights {_human(f['weights_bytes'])} at their dtypes (the file: {_human(f['file_bytes'])}); "
              f"activations at their peak {_human(f['activations_peak_bytes'])} (at {f['activations_peak_at']}, "
              f"inputs {f['input_shapes']})")
    else:
        print(f"  RWKV-7 {f['quant']}: weights {_human(f['weights_bytes'])} (the file: {_human(f['file_bytes'])}), "
              f"state {_human(f['state_bytes'])}, decode buffers {_human(f['step_bytes'])}; no sequence term")
    print(f"  weights kept in {f['weights_in']}; runtime code {_human(f['runtime_flash_bytes'])}, "
          f"runtime memory {_human(f['runtime_ram_bytes'])}")
    for r in result.regions:
        if not r.pieces and r.memory == "ram":
            continue
        parts = " + ".join(f"{p.what} {_human(p.bytes)}" for p in r.pieces) or "nothing"
        share = r.headroom / r.capacity if r.capacity else 0
        print(f"  {r.memory:5s} {r.region:22s} {_human(r.used):>10} of {_human(r.capacity):>10}  headroom "
              f"{_human(r.headroom)} ({share:.0%})  [{parts}]")
    for problem in result.problems:
        print(f"  does not fit: {problem}")
    if result.unplaced:
        print(f"  needs in all: flash {_human(result.used('flash'))}, RAM {_human(result.used('ram'))}")


@app.command()
def estimate(
    model: Annotated[str, typer.Argument(help="model.onnx, a folder written by compress/optimize, or an example.")],
    target: TargetOption,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Cores the host profiles with (default: all).")] = None,
    as_json: AsJson = False,
) -> None:
    """Estimated latency and energy per inference on the device (batch 1), with the error band
    measured on this machine. Calibrates this machine first when it has not been."""
    from edgewise.errors import EdgewiseError
    from edgewise.targets.predict import predict
    from edgewise.targets.profiles import load

    load(target)   # an unknown target fails before anything runs
    if Path(model).suffix in (".pth", ".safetensors"):
        _estimate_rwkv(Path(model), target, as_json)
        return
    with _model_path(model) as path:
        path = path / "model.onnx" if path.is_dir() else path
        if not path.is_file():
            raise EdgewiseError(f"{model}: no such model; give model.onnx, a folder written by compress/optimize, "
                                "or an example name")
        result = predict(path, target, threads=threads, progress=_calibrating)
        result["model"] = model
    if as_json:
        print(json.dumps(result, indent=2))
        return
    band = result["band"]
    e = result["estimate"]
    print(f"{model} on {result['target']} (estimate): {result['latency_ms']:.3g} ms per inference "
          f"({e['low_ms']:.3g}-{e['high_ms']:.3g} ms holds 90% of what was measured here), "
          f"{result['energy_mj']:.3g} mJ (energy estimated: {result['power_w']:g} W active x the time)")
    print(f"  error band measured on this machine, leave-one-family-out over {band['models']} models: "
          f"median {band['median_error']:.0%}, 90th percentile {band['p90_error']:.0%}")
    if result.get("host_latency_ms") is not None:
        print(f"  on this machine it measures {result['host_latency_ms']:.3g} ms")
    print("  the nodes that take longest there:")
    for node in result["top_nodes"]:
        print(f"    {node['op']:22s} {node['ms']:.3g} ms  ({node['bound']}-bound)")


def _estimate_rwkv(path: Path, target: str, as_json: bool) -> None:
    from edgewise.errors import EdgewiseError
    from edgewise.targets.predict import predict_rwkv

    if not path.is_file():
        raise EdgewiseError(f"{path}: no such file; give an RWKV-7 .pth or .safetensors file")
    result = predict_rwkv(path, target, progress=_calibrating)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    e = result["estimate"]
    print(f"{path} ({result['quant']}) on {result['target']} (estimate): {result['tokens_per_s']:.3g} tokens/s decoding, "
          f"{result['ms_per_token']:.3g} ms a token ({e['low_ms']:.3g}-{e['high_ms']:.3g} ms holds 90% of what was "
          f"measured here) and {result['energy_mj_per_token']:.3g} mJ "
          f"(energy estimated: {result['power_w']:g} W active x the time)")
    print(f"  {_human(result['weight_bytes_per_token'])} of weights streamed a token; decode reached "
          f"{result['bandwidth_share']:.0%} of this machine's bandwidth ({result['host_tokens_per_s']:.3g} tokens/s here), "
          "carried over to the target; memory stays the same however long the context")


def _calibrating(message: str) -> None:
    print(message, file=sys.stderr)


@app.command()
def calibrate(
    full: Annotated[bool, typer.Option("--full", help="The whole zoo (54 models, a few minutes) instead of 16.")] = False,
) -> None:
    """Measure this machine (bandwidth, GEMM throughput, overheads, the zoo node by node) and cache
    the calibration every estimate uses."""
    from rich.progress import Progress

    from edgewise.targets.calibrate import cache_path
    from edgewise.targets.calibrate import calibrate as run

    with Progress(transient=True) as progress:
        task = progress.add_task("calibrating: micro-benchmarks, then the zoo", total=None)
        c = run(quick=not full, progress=lambda name: progress.update(task, description=f"calibrating: {name}"))
    band = c["band"]
    print(f"calibrated this machine ({c['cores']} cores at {c['clock_ghz']:.2f} GHz, {c['why']}):")
    print(f"  fp32 MatMul {c['measured_fp32'] / 1e9:.0f} GFLOP/s, int8 MatMulInteger {c['measured_int8'] / 1e9:.0f} GOP/s, "
          f"read {c['bandwidth'] / 1e9:.0f} GB/s (last-level cache {c['cache_bandwidth'] / 1e9:.0f} GB/s), "
          f"{c['node_overhead'] * 1e6:.2f} us a node")
    print(f"  estimator, leave-one-family-out over {band['models']} models: median error {band['median_error']:.0%}, "
          f"90th percentile {band['p90_error']:.0%}")
    print(f"wrote {cache_path()}")
