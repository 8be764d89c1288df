"""edgewise's RWKV-7 runtime next to BlinkDL's `rwkv` package (fp32 CPU) and llama.cpp, in one run.

On a 0.1B-shaped random checkpoint (12 layers, width 768, vocab 65536), int8 and int4 on every
kernel path this CPU runs (EDGEWISE_KERNELS=avx512, avx2, portable: an AVX-512 machine runs the
AVX2 path too): decode and prefill tokens/s, peak RSS (each model in a fresh process), and
decode's share of the memory bandwidth:
decode blocks alternate with read-bandwidth readings in one process (the bandwidth drifts with
the machine's other tenants), each block judged against the better reading beside it. llama.cpp
(built once from the llama-cpp-python sdist, cached; see _llama_cpp.py) on the same checkpoint as
GGUF Q8_0 and Q4_0 (with a Q4_0 head), built for this CPU and, on an AVX-512 machine, for AVX2 too,
each against the edgewise path of the same instruction sets. On the tiny trained model: perplexity
of fp32, int8 and int4 on held-out text.

    python benchmarks/rwkv_runtime.py [--decode 48] [--prompt 512]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

WORKER = Path(__file__).with_name("_rwkv_worker.py")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(kind: str, path: Path, *args, kernels: str | None = None) -> dict:
    env = {**os.environ, **({"EDGEWISE_KERNELS": kernels} if kernels else {})}
    done = subprocess.run([sys.executable, str(WORKER), kind, str(path), *map(str, args)], capture_output=True,
                          text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed(console: Console, prompt: int, decode: int) -> None:
    with tempfile.TemporaryDirectory(prefix="edgewise-rwkv-bench-") as folder:  # ~0.7 GB of checkpoints
        _speed(console, Path(folder), prompt, decode)


def _speed(console: Console, folder: Path, prompt: int, decode: int) -> None:
    from edgewise.rwkv import RWKV, native
    from edgewise.rwkv.synthetic import random_checkpoint

    checkpoint = random_checkpoint(folder / "rwkv7-0.1b-shape.pth", layers=12, width=768, vocab=65536,
                                   ranks=(64, 64, 32, 128))
    files = {q: RWKV.load(checkpoint, quant=q).save(folder / f"{q}.safetensors") for q in ("int8", "int4")}
    paths = native.runnable()
    rows = {"reference fp32 (rwkv package)": run("reference", checkpoint, prompt, decode)}
    paired = {}
    for path in paths:
        for q in ("int8", "int4"):
            rows[f"edgewise {q} ({path})"] = run("edgewise", files[q], prompt, decode, kernels=path)
            # Decode's share of the bandwidth: decode blocks between bandwidth readings, in one process.
            paired[f"edgewise {q} ({path})"] = run("bandwidth", files[q], 5, 24, kernels=path)
    rows[f"edgewise fp32 ({paths[0] if paths else 'torch'})"] = run("edgewise", checkpoint, prompt, decode)
    again = run("reference", checkpoint, prompt, decode)  # the peer twice: drift shows
    ref = rows["reference fp32 (rwkv package)"]
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
        ref[key] = (ref[key] + again[key]) / 2
    readings = [gb for r in paired.values() for gb in r["bandwidth_gb_s"]]
    share = {name: float(np.median(r["shares"])) for name, r in paired.items()}
    table = Table(title=f"RWKV-7 0.1B shape, {torch.get_num_threads()} threads, {_cpu()}; read bandwidth measured "
                        f"{min(readings):.0f}-{max(readings):.0f} GB/s (median {np.median(readings):.0f}) over the run",
                  title_justify="left")
    for column in ("runtime (kernels)", "decode tok/s", "vs reference", "prefill tok/s (512)", "vs reference",
                   "peak RSS MB", "vs reference", "weights MB/token", "bandwidth used"):
        table.add_column(column, justify="left" if column.startswith("runtime") else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['decode_tokens_per_s']:.1f}", f"{r['decode_tokens_per_s'] / ref['decode_tokens_per_s']:.2f}x",
                      f"{r['prefill_tokens_per_s']:.0f}", f"{r['prefill_tokens_per_s'] / ref['prefill_tokens_per_s']:.2f}x",
                      f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.0%}",
                      f"{r['weight_bytes'] / 2**20:.0f}" if r["weight_bytes"] else "-",
                      f"{share[name]:.0%}" if name in share else "-")
    console.print(table)
    for name, r in rows.items():
        if "unquantized" not in r.get("prefill_gemm", "unquantized"):
            console.print(f"prefill GEMM, {name}: {r['prefill_gemm']}")
    checks = []
    for path in paths:
        int8, int4 = rows[f"edgewise int8 ({path})"], rows[f"edgewise int4 ({path})"]
        checks += [
            (f"({path}) int8 decode >= 4x the reference's tokens/s",
             int8["decode_tokens_per_s"] >= 4 * ref["decode_tokens_per_s"],
             f"{int8['decode_tokens_per_s'] / ref['decode_tokens_per_s']:.2f}x"),
            (f"({path}) int4 decode >= 1.3x int8 decode", int4["decode_tokens_per_s"] >= 1.3 * int8["decode_tokens_per_s"],
             f"{int4['decode_tokens_per_s'] / int8['decode_tokens_per_s']:.2f}x "
             f"({int4['decode_tokens_per_s']:.1f} vs {int8['decode_tokens_per_s']:.1f} tok/s)"),
            (f"({path}) 512-token prefill >= 2x the reference's sequence mode (int8)",
             int8["prefill_tokens_per_s"] >= 2 * ref["prefill_tokens_per_s"],
             f"{int8['prefill_tokens_per_s'] / ref['prefill_tokens_per_s']:.2f}x"),
        ]
        for q in ("int8", "int4"):
            name = f"edgewise {q} ({path})"
            checks.append((f"({path}) {q} decode uses >= 60% of the read bandwidth (median block)", share[name] >= 0.6,
                           f"{share[name]:.0%} (blocks {', '.join(f'{v:.0%}' for v in paired[name]['shares'])})"))
    best4 = rows[f"edgewise int4 ({paths[0]})"] if paths else None
    if best4:
        checks.append(("int4 decode peak RSS < 40% of the reference's", best4["peak_rss_mb"] < 0.4 * ref["peak_rss_mb"],
                       f"{best4['peak_rss_mb'] / ref['peak_rss_mb']:.0%}"))
    checks += _against_llama_cpp(console, folder, checkpoint, files, paths, prompt, decode)
    for goal, ok, figure in checks:
        console.print(f"{'PASS' if ok else 'FAIL'}  {goal}: {figure}")


def _against_llama_cpp(console: Console, folder: Path, checkpoint: Path, files: dict[str, Path], paths: list[str],
                       prompt: int, decode: int, rounds: int = 3) -> list[tuple[str, bool, str]]:
    """llama.cpp on the same checkpoint (GGUF Q8_0 and Q4_0 with a Q4_0 head), built for this CPU and, on
    an AVX-512 machine, for AVX2 too; each build against the edgewise path of its instruction sets.
    The two alternate, `rounds` times each (the machine's speed drifts by minutes), medians compared."""
    import _llama_cpp
    from edgewise.measure.machine import cpu_flags

    avx512 = "avx512f" in cpu_flags()
    # edgewise path -> the llama.cpp build that runs the same instruction sets
    builds = {"avx512": "native", "avx2": "avx2" if avx512 else "native"}
    pairs = {path: builds[path] for path in paths if path in builds}
    checks, table = [], Table(title=f"llama.cpp (peer) on the same checkpoint, alternating with edgewise, median of "
                                    f"{rounds}", title_justify="left")
    for column in ("llama.cpp build", "type", "decode tok/s", "edgewise", "ratio", "prefill tok/s (512)", "edgewise",
                   "ratio"):
        table.add_column(column, justify="left" if column.startswith(("llama", "type")) else "right")
    try:
        for path, variant in pairs.items():
            binaries = _llama_cpp.build(variant)
            gguf = _llama_cpp.gguf(checkpoint, folder / "gguf", binaries)
            death = _llama_cpp.dies(binaries, gguf["int8"]) if variant == "native" else None
            if death:
                console.print(f"llama.cpp's native build dies of {death} on this CPU (its AMX kernels: llama.cpp PR "
                              "#26954); the peer is built with every AVX-512 extension but AMX instead")
                variant = "avx512-no-amx"
                binaries = _llama_cpp.build(variant)
            for quant, (kind, _) in _llama_cpp.QUANT.items():
                peer, ours = [], []
                for _ in range(rounds):
                    ours.append(run("edgewise", files[quant], prompt, decode, kernels=path))
                    peer.append(_llama_cpp.bench(binaries, gguf[quant], prompt, decode, torch.get_num_threads(),
                                                 repetitions=1))
                median = {side: {key: float(np.median([r[key] for r in runs]))
                                 for key in ("decode_tokens_per_s", "prefill_tokens_per_s")}
                          for side, runs in (("peer", peer), ("ours", ours))}
                decode_ratio = median["ours"]["decode_tokens_per_s"] / median["peer"]["decode_tokens_per_s"]
                prefill_ratio = median["ours"]["prefill_tokens_per_s"] / median["peer"]["prefill_tokens_per_s"]
                name = f"{variant} ({'avx2' if variant == 'avx2' or not avx512 else 'avx512'})"
                table.add_row(name, kind, f"{median['peer']['decode_tokens_per_s']:.1f}",
                              f"{median['ours']['decode_tokens_per_s']:.1f}", f"{decode_ratio:.2f}x",
                              f"{median['peer']['prefill_tokens_per_s']:.0f}",
                              f"{median['ours']['prefill_tokens_per_s']:.0f}", f"{prefill_ratio:.2f}x")
                checks += [(f"({path}) edgewise {quant} decode >= llama.cpp {kind}", decode_ratio >= 1.0,
                            f"{decode_ratio:.2f}x"),
                           (f"({path}) edgewise {quant} 512-token prefill >= 0.8x llama.cpp {kind}",
                            prefill_ratio >= 0.8, f"{prefill_ratio:.2f}x")]
    except _llama_cpp.Unavailable as exc:
        console.print(f"llama.cpp skipped: {exc}")
    if table.rows:
        console.print(table)
    return checks


def _cpu() -> str:
    from edgewise.measure.machine import describe
    from edgewise.rwkv import native

    return f"{describe()['cpu']}, kernels runnable here: {', '.join(native.runnable()) or 'none'}"


def quality(console: Console, held_tokens: int = 4096) -> None:
    from edgewise.rwkv import RWKV
    from edgewise.rwkv.tokenizer import world_tokenizer
    from edgewise.rwkv.train import corpus, default_model_path, held_out_split, perplexity, train

    path = default_model_path()
    if not path.is_file():
        train(path)
    _, held = held_out_split(np.asarray(world_tokenizer().encode(corpus()), dtype=np.int64))
    held = held[:held_tokens]
    for path_name, stepwise in (("prefill", False), ("decode", True)):   # the torch and the fused C paths
        ppl = {}
        for quant in (None, "int8", "int4"):
            model = RWKV.load(path, quant=quant)
            ppl[quant or "fp32"] = perplexity(functools.partial(model.logits_all, stepwise=stepwise), held)
        console.print(f"tiny trained RWKV-7 ({path.name}), perplexity on {len(held)} held-out tokens, {path_name} path: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in ppl.items()))
        for quant, limit in (("int8", 0.01), ("int4", 0.05)):
            change = ppl[quant] / ppl["fp32"] - 1
            console.print(f"{'PASS' if change <= limit else 'FAIL'}  {quant} perplexity within {limit:.0%} of fp32 "
                          f"({path_name} path): {change:+.2%}")


def tokenizer_speed(console: Console) -> None:
    """Encoding MB/s of edgewise's World tokenizer next to the rwkv package's own (pure Python)."""
    import os

    import rwkv as rwkv_package
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    from edgewise.rwkv.tokenizer import world_tokenizer
    from edgewise.rwkv.train import corpus

    text = corpus(max_bytes=2_000_000)
    size_mb = len(text.encode()) / 1e6
    ours, theirs = world_tokenizer(), TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv_package.__file__),
                                                                  "rwkv_vocab_v20230424.txt"))
    ours_s, theirs_s = _timed(lambda: ours.encode(text)), _timed(lambda: theirs.encode(text))
    same = ours.encode(text) == theirs.encode(text)
    console.print(f"{'PASS' if size_mb / ours_s >= 1 and same else 'FAIL'}  tokenizer >= 1 MB/s: "
                  f"{size_mb / ours_s:.1f} MB/s (rwkv package {size_mb / theirs_s:.1f} MB/s, "
                  f"identical tokens: {same}, exact round trip: {ours.decode(ours.encode(text)) == text})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=48)
    options = parser.parse_args()
    console = Console(width=160)
    speed(console, options.prompt, options.decode)
    quality(console)
    tokenizer_speed(console)


if __name__ == "__main__":
    main()
