"""llama.cpp as a peer of the RWKV runtime: built once from the llama-cpp-python sdist (which vendors
llama.cpp), cached; an official-layout RWKV-7 .pth converted to GGUF by llama.cpp's own converter,
quantized by `llama-quantize`, timed by `llama-bench`. Nothing of llama.cpp is kept in this repository.

Every function returns None, or raises `Unavailable` with the reason, where llama.cpp cannot be had
(no network to the package index, no cmake or C++ compiler): the benchmark then skips the peer and
says why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

SDIST = ("llama-cpp-python", "0.3.36")   # vendors llama.cpp commit 0c1e57098
# The AVX2 build on an AVX-512 machine: the instruction sets of an AVX2-only x86-64 (Haswell, Zen 1-3).
AVX2_FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
              "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF"]
# Where the native build dies in llama.cpp's AMX kernels (an invalid tile config, llama.cpp PR #26954: SIGILL
# on Xeons with AMX): every AVX-512 extension but AMX, which this runtime does not use either.
AVX512_FLAGS = [*AVX2_FLAGS[:-2], "-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON",
                "-DGGML_AVX512_BF16=ON", "-DGGML_AVX_VNNI=ON", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
                "-DGGML_AMX_BF16=OFF"]
BUILD_FLAGS = {"native": ["-DGGML_NATIVE=ON"], "avx512-no-amx": AVX512_FLAGS, "avx2": AVX2_FLAGS}
# llama-quantize types at equal bits to edgewise's: int8 per row ~ Q8_0 (blocks of 32), int4 per 64 ~ Q4_0
# (blocks of 32), the head quantized too, as edgewise int4 quantizes it.
QUANT = {"int8": ("Q8_0", []), "int4": ("Q4_0", ["--output-tensor-type", "q4_0"])}


class Unavailable(RuntimeError):
    """llama.cpp cannot be built or run here; the message says why."""


def _cache() -> Path:
    from edgewise.files import cache_dir
    return cache_dir() / "peers" / f"llama.cpp-{SDIST[1]}"


def _run(command: list[str], log: Path, **kwargs) -> None:
    with open(log, "a") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode:
        raise Unavailable(f"{Path(command[0]).name} failed (exit {done.returncode}); see {log}")


def source() -> Path:
    """The vendored llama.cpp tree of the sdist, downloaded and unpacked once."""
    root = _cache() / "src"
    tree = root / f"llama_cpp_python-{SDIST[1]}" / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
          f"{SDIST[0]}=={SDIST[1]}", "-d", str(root)], root / "download.log", timeout=900)
    archive = next(root.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return tree


def build(variant: str) -> Path:
    """`llama-bench` and `llama-quantize` of one build variant ("native" or "avx2"): their folder."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise Unavailable(f"no {tool} on PATH")
    out = _cache() / f"build-{variant}"
    binaries = out / "bin"
    if all((binaries / name).is_file() for name in ("llama-bench", "llama-quantize")):
        return binaries
    tree, log = source(), _cache() / f"build-{variant}.log"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(tree), "-B", str(out), *generator, "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
          "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_OPENMP=ON",
          *BUILD_FLAGS[variant]], log, timeout=600)
    _run(["cmake", "--build", str(out), "-j", str(os.cpu_count() or 1), "--target", "llama-bench", "llama-quantize"],
         log, timeout=3600)
    return binaries


def _hf_folder(checkpoint: Path, folder: Path) -> Path:
    """A Hugging Face-style folder of an official-layout .pth, as llama.cpp's converter reads it."""
    from safetensors.torch import save_file

    weights = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)

    def renamed(key: str) -> str:
        if key in ("emb.weight",):
            return "model.embeddings.weight"
        if key.startswith("ln_out."):
            return "model." + key
        if key.startswith("blocks."):
            _, layer, rest = key.split(".", 2)
            rest = rest.replace("ln0.", "pre_norm.").replace("att.", "attention.").replace("ffn.", "feed_forward.")
            return f"model.layers.{layer}.{rest}"
        return key   # head.weight

    tensors = {renamed(k): v.float().contiguous() for k, v in weights.items()}
    vocab, width = tensors["model.embeddings.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("model.layers."))
    ranks = {name: tensors[f"model.layers.0.attention.{key}"].shape[1]
             for name, key in (("lora_rank_decay", "w1"), ("lora_rank_iclr", "a1"),
                               ("lora_rank_value_residual_mix", "v1"), ("lora_rank_gate", "g1"))}
    head_size = tensors["model.layers.0.attention.r_k"].shape[-1]
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Rwkv7ForCausalLM"], "hidden_size": width, "num_hidden_layers": layers,
        "head_size": head_size, "intermediate_size": tensors["model.layers.0.feed_forward.key.weight"].shape[0],
        "layer_norm_epsilon": 1e-5, "vocab_size": vocab, **ranks}))
    import rwkv   # the World vocabulary the converter reads, from BlinkDL's package
    shutil.copy(Path(rwkv.__file__).with_name("rwkv_vocab_v20230424.txt"), folder)
    return folder


def gguf(checkpoint: Path, folder: Path, binaries: Path) -> dict[str, Path]:
    """The checkpoint as GGUF, F32 and at each of QUANT's types: {"fp32" | "int8" | "int4": path}."""
    tree, log = source(), folder / "convert.log"
    f32 = folder / "model-f32.gguf"
    if not f32.is_file():
        hf = _hf_folder(checkpoint, folder / "hf")
        env = {**os.environ, "PYTHONPATH": str(tree / "gguf-py"), "NO_LOCAL_GGUF": ""}
        _run([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(hf), "--outtype", "f32", "--outfile", str(f32)],
             log, env=env, timeout=1800)
        shutil.rmtree(hf)
    files = {"fp32": f32}
    for quant, (kind, extra) in QUANT.items():
        files[quant] = folder / f"model-{kind}.gguf"
        if not files[quant].is_file():
            _run([str(binaries / "llama-quantize"), *extra, str(f32), str(files[quant]), kind], log, timeout=1800)
    return files


def dies(binaries: Path, model: Path) -> str | None:
    """How `llama-bench` dies on `model` (a few tokens) where a signal kills it: "an illegal
    instruction" (the native build's AMX kernels on a Xeon with AMX, llama.cpp PR #26954), or the
    signal's name (one run of the same build there died without a word: SIGILL is not the only way);
    None where it runs. Other failures raise."""
    done = subprocess.run([str(binaries / "llama-bench"), "-m", str(model), "-p", "32", "-n", "4", "-r", "1"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode < 0:
        return "an illegal instruction" if done.returncode == -signal.SIGILL else signal.Signals(-done.returncode).name
    if done.returncode:
        raise Unavailable(f"llama-bench failed on {model.name} (exit {done.returncode}): "
                          f"{done.stderr.strip().splitlines()[-1:]}")
    return None


def bench(binaries: Path, model: Path, prompt_tokens: int, decode_tokens: int, threads: int,
          repetitions: int = 3) -> dict:
    """llama-bench's prefill (pp) and decode (tg) tokens/s: {"prefill_tokens_per_s", "decode_tokens_per_s"}."""
    done = subprocess.run([str(binaries / "llama-bench"), "-m", str(model), "-p", str(prompt_tokens),
                           "-n", str(decode_tokens), "-t", str(threads), "-r", str(repetitions), "-o", "json"],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise Unavailable(f"llama-bench failed on {model.name} (exit {done.returncode}): "
                          f"{done.stderr.strip().splitlines()[-1:]}")
    tests = json.loads(done.stdout)
    speed = {("prefill" if t["n_prompt"] else "decode"): t["avg_ts"] for t in tests}
    return {"prefill_tokens_per_s": speed["prefill"], "decode_tokens_per_s": speed["decode"]}
