"""The `edgewise` command. Thin: parses flags, calls the API, prints."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

# Before torch loads OpenMP: a server runs its models on several threads (a batcher per RWKV model,
# loader threads), more OpenMP masters than cores, and there libgomp stops spinning at barriers: every
# barrier of a decode step then waits for a futex wake (2 cores: 8.0 -> 13.6 ms a token). Spinning a
# bounded while, then sleeping, keeps an idle server idle.
if sys.argv[1:2] == ["serve"]:
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
    os.environ.setdefault("GOMP_SPINCOUNT", "100000")

# Libraries that transformers and ExecuTorch pull in speak on import to every command's stderr: torchao
# that its CUDA kernels do not load on a CPU, torch's pytree about a deprecated registration. Nothing
# a user can act on; real errors still show.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

import typer
from typer.exceptions import TyperException

from edgewise.errors import EdgewiseError
from edgewise.rwkv.cli import app as rwkv_app
from edgewise.targets.cli import app as targets_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Make trained models fit the edge, and prove what it cost.")


@app.callback()
def _root() -> None:
    """Make trained models fit the edge, and prove what it cost."""


app.add_typer(rwkv_app, name="rwkv")
app.add_typer(targets_app, name="targets")


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise EdgewiseError(f"--batch {text!r}: expected sizes separated by commas, e.g. 1,32") from None
    if not sizes or min(sizes) < 1:
        raise EdgewiseError(f"--batch {text!r}: sizes must be whole numbers >= 1, e.g. 1,32")
    return sizes


@app.command()
def bench(
    models: Annotated[Optional[list[str]], typer.Argument(help="ONNX files, example names, or weights (.pt/.safetensors) for --example's model.")] = None,
    example: Annotated[Optional[str], typer.Option(help="Built-in task whose data and metric judge the models: digits, breast-cancer, minilm.")] = None,
    task: Annotated[Optional[str], typer.Option(help="Your own task: path/to/file.py:name.")] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1",
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime intra-op threads (default: all cores).")] = None,
    seconds: Annotated[float, typer.Option(min=0.1, help="Timed seconds per batch size, shared by the models.")] = 2.0,
    device: Annotated[str, typer.Option(help="Device profile for the energy estimate when RAPL is absent.")] = "server-x86",
    usd_per_core_hour: Annotated[float, typer.Option(min=0, help="Price of one busy core for an hour.")] = 0.05,
    usd_per_kwh: Annotated[Optional[float], typer.Option(min=0, help="Price of energy; when given, cost follows energy.")] = None,
    grid_g_per_kwh: Annotated[float, typer.Option(min=0, help="Grid carbon intensity, g CO2e/kWh (world average 480).")] = 480.0,
    target: Annotated[Optional[str], typer.Option(help="Add estimated columns for a device (edgewise targets list): fits, latency, energy, RAM.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Measure models on ONNX Runtime: latency p50/p90/p99, throughput, peak memory, size,
    parameters, task metric, energy, cost and CO2 per million inferences.

    Two or more models run interleaved in one process and are compared as ratios to the first.
    """
    if target is not None:
        from edgewise.targets.profiles import load as load_target

        load_target(target)   # an unknown name fails before anything is measured
    from edgewise.load import load_task, resolve_targets
    from edgewise.measure import energy
    from edgewise.measure.bench import BenchSettings
    from edgewise.measure.bench import bench as run_bench
    from edgewise.measure.table import bench_json, bench_table

    settings = BenchSettings(batch_sizes=_batch_sizes(batch), seconds=seconds, device=energy.profile(device).name,
                             prices=energy.Prices(usd_per_core_hour, usd_per_kwh, grid_g_per_kwh))
    if threads:
        settings.threads = threads
    with tempfile.TemporaryDirectory(prefix="edgewise-") as workdir:
        targets = resolve_targets(models or [], load_task(example, task), Path(workdir))
        results = run_bench(targets, settings)
        estimates = _on_target(targets, target) if target else None
    if as_json:
        out = bench_json(targets, results, settings)
        if estimates:   # each batch-1 result carries its model's estimate on the target beside what was measured
            by_model = {e["model"]: e for e in estimates}
            for r in out["results"]:
                if r["batch"] == 1 and r["model"] in by_model:
                    r["estimate"] = {"target": target, **by_model[r["model"]]["estimate"]}
            out["on_target"] = estimates
        print(json.dumps(out, indent=2))
    else:
        bench_table(targets, results, settings)
        if estimates:
            _print_on_target(estimates, target)


def _on_target(targets, name: str) -> list[dict]:
    """Each benched model's fit and estimates on the device `name`."""
    from edgewise.targets.fit import fit
    from edgewise.targets.predict import predict
    from edgewise.targets.profiles import load

    device = load(name)
    rows = []
    for t in targets:
        fitted = fit(t.path, device).to_json()
        estimate = predict(t.path, device, progress=lambda m: print(m, file=sys.stderr))
        rows.append({"model": t.name, "target": device.name, "estimate": estimate["estimate"],
                     **{k: fitted[k] for k in ("fits", "problems", "flash_bytes", "ram_bytes", "regions")},
                     "latency_ms": estimate["latency_ms"], "energy_mj": estimate["energy_mj"],
                     "band": estimate["band"], "estimated": True})
    return rows


def _print_on_target(rows: list[dict], name: str) -> None:
    band = rows[0]["band"]
    print(f"on {name} (estimates, not measurements; error band on this machine, leave-one-family-out: median "
          f"{band['median_error']:.0%}, 90th percentile {band['p90_error']:.0%}):")
    for r in rows:
        print(f"  {r['model']}: {'fits' if r['fits'] else 'does not fit'}, {r['latency_ms']:.3g} ms "
              f"({r['estimate']['low_ms']:.3g}-{r['estimate']['high_ms']:.3g}), "
              f"{r['energy_mj']:.3g} mJ, RAM {r['ram_bytes'] / 2**20:.1f} MiB"
              + (f" ({r['problems'][0]})" if r["problems"] else ""))


@app.command()
def compress(
    recipe: Annotated[str, typer.Option(help='Steps joined by "+": distill(depth=F,width=F), prune(F[,kind=structured|unstructured|layer|2:4]), int8, int8-dynamic, int4, int8-weight, bf16.')],
    example: Annotated[Optional[str], typer.Option(help="Built-in task: digits, breast-cancer, minilm.")] = None,
    task: Annotated[Optional[str], typer.Option(help="Your own task: path/to/file.py:name.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write model.onnx and card.json here.")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime intra-op threads (default: all cores).")] = None,
    seconds: Annotated[float, typer.Option(min=0.1, help="Timed seconds to measure all candidates.")] = 3.0,
    export: Annotated[Optional[list[str]], typer.Option(help="Also write the model for another runtime (with --out): executorch (model.pte, XNNPACK), checked against the host.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Compress a model with a recipe and measure each step on ONNX Runtime.

    Example: edgewise compress --example digits --recipe "prune(0.5)+int8" --out digits-small --export executorch
    """
    from edgewise.compression.recipe import compress as run_compress
    from edgewise.compression.recipe import parse_recipe, write_artifacts
    from edgewise.load import load_task
    from edgewise.measure.bench import BenchSettings
    from edgewise.measure.table import print_figures

    steps = parse_recipe(recipe)  # a bad recipe fails before any model is loaded
    formats = _export_formats(export, out)
    chosen = load_task(example, task)
    if chosen is None:
        raise EdgewiseError("name the model to compress: --example NAME or --task FILE:NAME")
    if out is not None:
        _check_writable(out)
    settings = BenchSettings(batch_sizes=(1,), seconds=seconds)
    if threads:
        settings.threads = threads
    with tempfile.TemporaryDirectory(prefix="edgewise-") as workdir:
        result = run_compress(chosen, steps, workdir=workdir, settings=settings)
        final = result.final
        exports = _ship(chosen, final.model if final.model is not None else final.float_model, steps, formats, out)
        if out is not None:
            write_artifacts(result, out, {"exports": [e.to_json() for e in exports]} if exports else None)
    if as_json:
        extra = {"exports": [e.to_json() for e in exports]} if formats else {}
        print(json.dumps({**result.to_json(), **extra}, indent=2, default=str))
        return
    candidates = [result.baseline, *result.steps]
    print_figures([c.figures for c in candidates], settings, f"edgewise compress {chosen.name}: {recipe}")
    print(f"{chosen.metric.name} on held-out data (on the validation data choices were made on):")
    for candidate in candidates:
        print(f"  {candidate.name}: {candidate.figures.metric.value:.4f} ({candidate.validation_metric:.4f})")
    for candidate in result.steps:
        if candidate.details.get("message"):
            print(f"{candidate.name}: {candidate.details['message']}")
    if out is not None:
        print(f"wrote {out / 'model.onnx'} and {out / 'card.json'}")
    for exported in exports:
        print(exported.line())


def _export_formats(export: list[str] | None, out: Path | None) -> list[str]:
    """The --export formats, checked (and their package found) before any work starts."""
    if not export:
        return []
    if out is None:
        raise EdgewiseError("--export writes beside model.onnx: give --out FOLDER too")
    from edgewise.targets.export import check_format
    return [check_format(name) for name in dict.fromkeys(export)]


def _ship(task, model, steps, formats: list[str], out: Path | None) -> list:
    """Each --export format of `model` (a recipe's torch form), written into `out` when its round trip passes."""
    if not formats:
        return []
    from edgewise.progress import status
    from edgewise.targets.export import ship

    with status(f"exporting to {', '.join(formats)} and checking the round trip"):
        return ship(task, model, steps, formats, out)


def _hint_exports(target: str | None, formats: list[str]) -> None:
    """With --target: the formats its usual runtime takes that were not asked for."""
    if target is None:
        return
    from edgewise.targets.profiles import load

    missing = [f for f in load(target).exports if f not in formats]
    if missing:
        print(f"{target} also runs {', '.join(missing)}: add --export {' --export '.join(missing)} to ship it")


def _check_writable(folder: Path) -> None:
    """Fail early if `folder` cannot be written, without creating it."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise EdgewiseError(f"--out {folder}: {existing} is a file; choose a folder")
    try:
        with tempfile.TemporaryDirectory(dir=existing):
            pass
    except OSError as exc:
        raise EdgewiseError(f"--out {folder}: not writable ({exc.strerror}); choose another folder") from None


@app.command()
def optimize(
    example: Annotated[Optional[str], typer.Option(help="Built-in task (default: digits).")] = None,
    task: Annotated[Optional[str], typer.Option(help="Your own task: path/to/file.py:name.")] = None,
    onnx: Annotated[Optional[str], typer.Option(help="An ONNX model to quantize (with --data).")] = None,
    data: Annotated[Optional[str], typer.Option(help=".npz of the model's inputs, labels as 'y' (optional).")] = None,
    max_drop: Annotated[float, typer.Option(help="Allowed metric drop: points, or % with --relative.")] = 1.0,
    relative: Annotated[bool, typer.Option(help="--max-drop is a percentage of the baseline metric.")] = False,
    objective: Annotated[str, typer.Option(help="What to minimise: latency, size or energy.")] = "latency",
    max_size_mb: Annotated[Optional[float], typer.Option(help="Largest model file, MB.")] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option(help="Largest batch-1 p50 latency, ms (with --target: estimated there).")] = None,
    target: Annotated[Optional[str], typer.Option(help="Optimise for a device (edgewise targets list): candidates must fit it; latency and energy are its estimates.")] = None,
    max_ram_mb: Annotated[Optional[float], typer.Option(help="Largest RAM on --target, MB.")] = None,
    trials: Annotated[int, typer.Option(min=1, help="Recipes to try (capped by the search space).")] = 20,
    time_budget_min: Annotated[float, typer.Option(help="Stop starting trials after this many minutes.")] = 10.0,
    study: Annotated[Optional[str], typer.Option(help="Optuna storage to resume or share, e.g. sqlite:///edgewise.db or postgresql://user@host/db (several workers may run on one).")] = None,
    report_only: Annotated[bool, typer.Option(help="Run no trials: write the report of the --study as it stands.")] = False,
    guard: Annotated[bool, typer.Option(help="Accuracy guard in quantization (always on for --onnx).")] = False,
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = None,
    export: Annotated[Optional[list[str]], typer.Option(help="Also write the chosen model for another runtime: executorch (model.pte, XNNPACK), checked against the host.")] = None,
    out: Annotated[Path, typer.Option(help="Where model.onnx, card.json, candidates.json and the reports go.")] = Path("edgewise-out"),
) -> None:
    """Find the best compressed model within a budget and write it with a report.

    With no arguments it runs on the digits example. Ctrl-C stops the search and still writes the
    best model found so far and a valid report.
    """
    from edgewise.load import load_task
    from edgewise.measure.bench import BenchSettings
    from edgewise.measure.table import print_figures
    from edgewise.optimization.run import optimize as run_optimize
    from edgewise.optimization.report import write_outputs
    from edgewise.optimization.search import Constraints, SearchSettings

    constraints = Constraints(max_drop, relative, max_size_mb, max_latency_ms, target, max_ram_mb)
    formats = _export_formats(export, out)
    settings = SearchSettings(objective=objective, trials=trials, time_budget_min=time_budget_min, study=study,
                              guard=guard, threads=threads, exports=tuple(formats),
                              report_only=report_only)
    _check_writable(out)
    chosen_task = load_task(example, task, onnx, data) or load_task("digits")
    with tempfile.TemporaryDirectory(prefix="edgewise-optimize-") as workdir:  # candidates: gone afterwards
        result = run_optimize(chosen_task, constraints, settings, workdir=workdir)
        if result.torch_form is not None:
            result.exports = _ship(chosen_task, *result.torch_form, formats, out)
        write_outputs(result, out)
    rows = [c.figures for c in result.finalists]
    print_figures(rows, BenchSettings(), f"edgewise optimize {chosen_task.name}: baseline, peer, chosen")
    unit = "%" if relative else " points"
    print(f"chosen: {result.chosen.recipe} (metric drop {result.chosen.drop:.3f}{unit} on validation, "
          f"{result.held_out_drop:.3f}{unit} held out; {'within' if result.met else 'NOT within'} constraints) "
          f"from {len(result.trials)} trials")
    for line in (result.disagreement, result.message):
        if line:
            print(line)
    print(f"wrote {out}/model.onnx, card.json, candidates.json, report.html, report.md")
    for exported in result.exports:
        print(exported.line())
    _hint_exports(target, formats)
    if result.interrupted:
        raise typer.Exit(130)


@app.command()
def serve(
    models_dir: Annotated[Path, typer.Argument(help="Folder of models: folders written by compress/optimize, RWKV-7 files.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    memory_budget: Annotated[str, typer.Option(help="Bytes the resident models may take, measured: 2GB, 512MiB.")] = "2GB",
    api_key: Annotated[Optional[str], typer.Option(envvar="EDGEWISE_API_KEY", help="Required as 'Authorization: Bearer KEY' (default: one is made and printed).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No API key (only on a loopback address).")] = False,
    pin: Annotated[Optional[list[str]], typer.Option(help="Keep this model resident (repeatable).")] = None,
    keep_alive: Annotated[str, typer.Option(help="Unload a model idle this long: 30s, 5m, 1h; 0 = never.")] = "5m",
    max_queue: Annotated[int, typer.Option(min=1, help="Requests in flight or waiting per model; more get 503.")] = 32,
    max_body: Annotated[str, typer.Option(help="Largest request body; larger get 413.")] = "1MiB",
    max_tokens: Annotated[int, typer.Option(min=1, help="Cap of a request's max_tokens.")] = 4096,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Compute threads (default: all cores).")] = None,
    grace: Annotated[str, typer.Option(help="On SIGTERM, time to finish requests in flight.")] = "30s",
    device: Annotated[Optional[str], typer.Option(help="Device profile for the energy estimate.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Serve on Ray Serve: replicas routed by the model they hold (a local cluster unless --ray-address).")] = False,
    replicas: Annotated[int, typer.Option(min=1, help="With --ray: replicas, each with its own --memory-budget.")] = 2,
    ray_address: Annotated[Optional[str], typer.Option(help="An existing Ray cluster to join (implies --ray), e.g. ray://head:10001 or auto.")] = None,
) -> None:
    """Serve many models behind one OpenAI-compatible API (and KServe v2) within a memory budget.

    RWKV-7 files answer /v1/completions and /v1/chat/completions; text encoders /v1/embeddings;
    every ONNX model /v2/models/ID/infer. /v1/models lists them, /metrics is Prometheus.
    """
    from edgewise.serve import serve as run

    run(str(models_dir), host, port, memory_budget, api_key, no_auth, tuple(pin or ()), keep_alive, max_queue,
        max_body, max_tokens, threads, grace, device, ray=ray, replicas=replicas, ray_address=ray_address)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line on stderr and exit 2; bugs still raise."""
    try:
        # Without standalone mode, typer returns the code of a typer.Exit instead of raising it.
        code = app(args=argv, prog_name="edgewise", standalone_mode=False)
    except EdgewiseError as exc:
        print(f"edgewise: error: {' '.join(str(exc).split())}", file=sys.stderr)   # one line, whatever it quotes
        return 2
    except TyperException as exc:  # bad flags and values, from typer's own parser
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            return 2
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx else "edgewise"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"edgewise: error: {message} (see '{command} --help')", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("edgewise: interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
