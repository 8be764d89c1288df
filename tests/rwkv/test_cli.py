import json

import pytest
import torch

from edgewise.cli import main
from edgewise.rwkv import native


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_reproducibly_with_a_seed(capsys, world_checkpoint):
    args = ["rwkv", "generate", world_checkpoint, "--prompt", "Once upon", "--max-tokens", "12", "--seed", "3"]
    code, first, _ = run(capsys, *args, "--quant", "int8")
    assert code == 0 and first.startswith("Once upon") and len(first) > len("Once upon")
    assert run(capsys, *args, "--quant", "int8")[1] == first


def test_bench_json_and_convert(tmp_path, capsys, world_checkpoint):
    code, out, _ = run(capsys, "rwkv", "convert", world_checkpoint, "--quant", "int4", "--out", tmp_path / "m.safetensors")
    assert code == 0 and (tmp_path / "m.safetensors").is_file()
    code, out, _ = run(capsys, "rwkv", "bench", tmp_path / "m.safetensors", "--json", "--prompt-tokens", "1",
                       "--decode-tokens", "4")
    figures = json.loads(out)
    assert code == 0 and figures["quant"] == "int4" and figures["energy_method"] == "estimate"
    assert figures["decode_tokens_per_s"] > 0 and figures["prefill_tokens_per_s"] > 0 and figures["energy_j_per_token"] > 0
    assert figures["state_bytes"] == 2 * (2 + 64) * 128 * 4
    # the C step where this machine can build it, else the torch path (no compiler): whichever it has
    assert figures["decode_kernels"] == native.kernels(native.library()) and figures["decode_weight_gb_per_s"] > 0
    assert "measured" in figures["prefill_gemm"] and "bf16 dot products" in figures["prefill_gemm"]


@pytest.fixture
def bad_files(tmp_path, world_checkpoint):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["rwkv", "generate", "{d}/missing.pth"], "no such file"),
    (["rwkv", "generate", "{d}/garbage.pth"], "not a readable PyTorch weights file"),
    (["rwkv", "generate", "{d}/other.pth"], "not an RWKV checkpoint"),
    (["rwkv", "generate", "{w}", "--quant", "int3"], "quant 'int3'"),
    (["rwkv", "generate", "{w}", "--prompt", "bad \udcff"], "not valid UTF-8"),
    (["rwkv", "generate", "{w}", "--top-p", "0"], "top-p"),
    (["rwkv", "generate", "{w}", "--seed", "-1"], "--seed -1 is negative"),
    (["rwkv", "generate", "{w}", "--temperature", "nan"], "--temperature"),
    (["rwkv", "generate", "{w}", "--presence-penalty", "inf"], "must be finite numbers"),
    (["rwkv", "bench", "{w}", "--decode-tokens", "99999999999999999999"], "--decode-tokens"),
    (["rwkv", "convert", "{w}", "--out", "{d}"], "is a folder; give a file name"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, bad_files, world_checkpoint, argv, message):
    code, _, err = run(capsys, *[a.format(d=bad_files, w=world_checkpoint) for a in argv])
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.skipif(not native.runnable(), reason="no kernels were compiled at install")
def test_nothing_compiles_at_run_time(world_checkpoint, tmp_path):
    """With no compiler at all (CC=false, PATH without gcc) and an empty cache, decode runs on the
    kernels built at install."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "CC": "false", "PATH": os.path.dirname(sys.executable), "EDGEWISE_CACHE_DIR": str(tmp_path)}
    env.pop("EDGEWISE_KERNELS_LIB", None)
    done = subprocess.run([sys.executable, "-m", "edgewise.cli", "rwkv", "bench", str(world_checkpoint), "--json",
                           "--prompt-tokens", "2", "--decode-tokens", "2", "--quant", "int8"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    # the int4 kernel width is measured once per CPU and cache folder: the child's empty one measures again
    assert (json.loads(done.stdout)["decode_kernels"].removesuffix("-int4ymm")
            == native.kernels(native.variant(native.runnable()[0])).removesuffix("-int4ymm"))
