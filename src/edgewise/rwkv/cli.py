"""`edgewise rwkv ...`: generate, bench, convert, train."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgewise.errors import EdgewiseError

app = typer.Typer(no_args_is_help=True, help="RWKV-7 on the CPU: generate, bench, convert, train.")

Quant = Annotated[Optional[str], typer.Option(help="Weights: int8 or int4 (default fp32).")]


def _model(path: Optional[Path], quant: Optional[str]):
    from edgewise.rwkv import RWKV
    from edgewise.rwkv.train import default_model_path, train

    if path is None:
        path = default_model_path()
        if not path.is_file():
            print("no model given: training the tiny demo RWKV-7 first (about 3 minutes)", file=sys.stderr)
            train(path)
    return RWKV.load(path, quant=quant)


@app.command()
def generate(
    model: Annotated[Optional[Path], typer.Argument(help="An RWKV-7 .pth/.safetensors or a converted file (default: the tiny demo model).")] = None,
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "def ",
    max_tokens: Annotated[int, typer.Option(min=1, max=1_000_000, help="Tokens to generate.")] = 100,
    quant: Quant = None,
    temperature: Annotated[float, typer.Option(min=0)] = 1.0,
    top_p: Annotated[float, typer.Option()] = 0.85,
    top_k: Annotated[int, typer.Option(min=0)] = 0,
    presence_penalty: Annotated[float, typer.Option()] = 0.0,
    frequency_penalty: Annotated[float, typer.Option()] = 0.0,
    penalty_decay: Annotated[float, typer.Option()] = 0.996,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop at this text (repeatable).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Makes the output reproducible.")] = None,
) -> None:
    """Continue a prompt, streaming tokens as they come."""
    from edgewise.rwkv.generate import generate as run
    from edgewise.rwkv.sampling import Sampling
    from edgewise.rwkv.tokenizer import world_tokenizer

    sampling = Sampling(temperature, top_p, top_k, presence_penalty, frequency_penalty, penalty_decay, seed)
    tokenizer = world_tokenizer()
    tokenizer.encode(prompt)  # an invalid prompt fails before the model loads
    rwkv = _model(model, quant)
    sys.stdout.write(prompt)
    for piece in run(rwkv, tokenizer, prompt, max_tokens, sampling, tuple(stop or ())):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def bench(
    model: Annotated[Optional[Path], typer.Argument(help="An RWKV-7 checkpoint (default: the tiny demo model).")] = None,
    quant: Quant = None,
    prompt_tokens: Annotated[int, typer.Option(min=1, max=1_000_000, help="Prefill length.")] = 512,
    decode_tokens: Annotated[int, typer.Option(min=1, max=1_000_000, help="Tokens decoded one by one.")] = 64,
    device: Annotated[str, typer.Option(help="Device profile for the energy estimate.")] = "server-x86",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Prefill and decode tokens/s, peak memory, weight bytes and energy per token."""
    from edgewise.rwkv.bench import measure

    figures = measure(_model(model, quant), prompt_tokens, decode_tokens, device)
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:28s} {value:,.4g}" if isinstance(value, float) else f"{key:28s} {value}")


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="An official RWKV-7 checkpoint.")],
    out: Annotated[Path, typer.Option(help="The file to write (e.g. model-int4.safetensors).")],
    quant: Quant = "int4",
) -> None:
    """Quantize once and write a safetensors file that loads without quantizing again."""
    from edgewise.rwkv import RWKV

    if out.resolve() == model.resolve():
        raise EdgewiseError(f"--out {out} is the input checkpoint; choose another file")
    if out.is_dir():
        raise EdgewiseError(f"--out {out} is a folder; give a file name, e.g. {out / 'model-int4.safetensors'}")
    RWKV.load(model, quant=quant).save(out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB, {quant or 'fp32'})")


@app.command(name="train")
def train_command(
    out: Annotated[Optional[Path], typer.Option(help="Where to save the .pth (default: the cache).")] = None,
    minutes: Annotated[float, typer.Option(min=0.05, help="Training time.")] = 3.0,
) -> None:
    """Train the tiny demo RWKV-7 (4 layers, width 256) on the Python standard library's sources."""
    from edgewise.rwkv.train import train

    path, summary = train(out, minutes)
    print(f"wrote {path}: {summary['steps']} steps, held-out loss {summary['held_out_loss_before']:.3f} -> "
          f"{summary['held_out_loss_after']:.3f}")
