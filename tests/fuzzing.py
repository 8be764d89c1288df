"""A seeded mutation fuzzer for every loader and every command that reads a file.

Valid seed files of each kind (ONNX, .npz, task files, torch weights as .pt and .safetensors, RWKV
.pth / .safetensors / converted int8 and int4 files / saved states) are mutated, byte-wise and with
knowledge of their format (a safetensors header's shapes, dtypes and offsets; a torch dict's keys,
shapes and dtypes; an ONNX graph's initializers and nodes; an .npz's arrays; a task file's lines),
and each mutant goes through what the command does with it. Every outcome must be one of:

  ok       the input was valid after all, and the command ran
  refused  one line, "edgewise: error: ...", exit 2 (an EdgewiseError in the API)

Anything else is a finding: a traceback (any other exception), a crash (the process died on a
signal) or a hang (one input ran past its time limit). The loop runs in a child process so that a
crash or hang is caught and named by its input; findings are copied to `<workdir>/findings/`.

  python -m tests.fuzzing --minutes 30 [--seed 1] [--workdir DIR]    # a long run, counts printed

tests/test_fuzz.py runs it for a bounded time in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_INPUT_SECONDS = float(os.environ.get("EDGEWISE_FUZZ_INPUT_SECONDS", 60))
INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 8, 63, 64, 65, 127, 128, 255, 256, 320, 4096, 65535, 65536, 2**31 - 1, -2**31,
                    2**32, 2**40, 2**63 - 1]

# -- seeds: one valid file of each kind ----------------------------------------------------------

TASK_FILE = '''\
import numpy as np
import torch
from torch import nn
from edgewise import Task

def task():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    return Task(model, calibration=(x[:16],), eval=(x[16:], y[16:]), metric="accuracy", name="fuzz")
'''


def make_seeds(folder: Path) -> dict[str, Path]:
    """One valid file of every kind the targets read."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from edgewise.runtime import onnx as onnx_runtime
    from edgewise.rwkv import RWKV
    from edgewise.rwkv.synthetic import random_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    seeds = {"task.py": folder / "task.py"}
    seeds["task.py"].write_text(TASK_FILE)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    seeds["model.onnx"] = onnx_runtime.export(model, np.zeros((1, 6), np.float32), folder / "model.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 6)).astype(np.float32)
    np.savez(folder / "data.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    seeds["data.npz"] = folder / "data.npz"
    torch.save(model.state_dict(), folder / "weights.pt")
    seeds["weights.pt"] = folder / "weights.pt"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    seeds["weights.safetensors"] = folder / "weights.safetensors"
    pth = random_checkpoint(folder / "rwkv.pth", layers=2, width=128, vocab=320)
    seeds["rwkv.pth"] = pth
    save_file({k: v.contiguous() for k, v in torch.load(pth, weights_only=True).items()},
              str(folder / "rwkv.safetensors"))
    seeds["rwkv.safetensors"] = folder / "rwkv.safetensors"
    for quant in ("int8", "int4"):
        seeds[f"rwkv-{quant}.safetensors"] = RWKV.load(pth, quant=quant).save(folder / f"rwkv-{quant}.safetensors")
    rwkv = RWKV.load(pth)
    _, state = rwkv.forward([1, 2, 3], use_cache=False)
    seeds["state.safetensors"] = state.save(folder / "state.safetensors")
    return seeds


# -- mutators ------------------------------------------------------------------------------------

def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """A few byte-level edits: bit flips, interesting bytes, truncation, deleted or repeated runs."""
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        if not out:
            break
        kind, at = rng.randrange(6), rng.randrange(len(out))
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif kind == 2:
            del out[rng.randrange(len(out)):]
        elif kind == 3:
            del out[at:at + rng.randrange(1, 64)]
        elif kind == 4:
            out[at:at] = out[at:at + rng.randrange(1, 64)]
        else:
            out[at:at + 8] = struct.pack("<q", rng.choice(INTERESTING_INTS))
    return bytes(out)


def _new_shape(shape: list[int], rng: random.Random) -> list[int]:
    shape = list(shape)
    kind = rng.randrange(5)
    if kind == 0 and shape:
        shape[rng.randrange(len(shape))] = rng.choice(INTERESTING_INTS[:17])
    elif kind == 1:
        shape.append(rng.choice([1, 2, 64]))
    elif kind == 2 and shape:
        shape.pop(rng.randrange(len(shape)))
    elif kind == 3:
        shape.reverse()
    else:
        shape = [rng.choice([0, 1, 2, 3, 64, 128])] * rng.randrange(0, 4)
    return shape


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    """Edit the JSON header (shapes, dtypes, offsets, names, metadata) or the bytes of a tensor."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
    except (struct.error, ValueError, UnicodeDecodeError):
        return mutate_bytes(data, rng)
    body = bytearray(data[8 + length:])
    names = [k for k in header if k != "__metadata__"]
    if not names:
        return mutate_bytes(data, rng)
    name = rng.choice(names)
    entry = header[name]
    kind = rng.randrange(9)
    if kind == 0:
        entry["shape"] = _new_shape(entry["shape"], rng)
    elif kind == 1:
        entry["dtype"] = rng.choice(["F32", "F16", "BF16", "I8", "U8", "I32", "I64", "BOOL", "F64", "X"])
    elif kind == 2:
        start, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[start, end + rng.choice([-1, 1, 64])], [end, start], [0, end - start],
                                            [start, start]])
    elif kind == 3:
        del header[name]
    elif kind == 4:
        header[rng.choice([name + "x", "blocks.99.att.key.weight", "blocks.foo", "", name.replace("1", "7")])] = \
            header.pop(name)
    elif kind == 5:
        header["__metadata__"] = rng.choice([{}, {"format": "pt"}, {"format": "edgewise-rwkv7-state"}, {"x": "y"}])
    elif kind in (6, 7):   # the values of a tensor: small ones (a converted file's header) get interesting ints
        start, end = entry["data_offsets"]
        if entry["dtype"] in ("I64", "I32") and end - start <= 256:
            size = 8 if entry["dtype"] == "I64" else 4
            at = start + size * rng.randrange(max(1, (end - start) // size))
            value = rng.choice(INTERESTING_INTS)
            body[at:at + size] = struct.pack("<q" if size == 8 else "<i", max(-2**(8 * size - 1),
                                                                              min(value, 2**(8 * size - 1) - 1)))
        elif end > start:
            fill = rng.choice([b"\xff", b"\x00", b"\x7f\xc0"])   # NaN in bf16/fp32 (0x7fc0...), zeros, 0xff
            body[start:end] = (fill * (end - start))[:end - start]
    else:
        return mutate_bytes(data, rng)
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + bytes(body)


def mutate_torch(data: bytes, rng: random.Random) -> bytes:
    """Edit a saved dict of tensors: drop, rename, reshape, retype or replace an entry."""
    import torch

    if rng.random() < 0.3:
        return mutate_bytes(data, rng)
    try:
        tensors = torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        return mutate_bytes(data, rng)
    if not isinstance(tensors, dict) or not tensors:
        return mutate_bytes(data, rng)
    name = rng.choice(sorted(tensors))
    value = tensors[name]
    kind = rng.randrange(7)
    if kind == 0:
        del tensors[name]
    elif kind == 1:
        tensors[rng.choice(["blocks.foo.att.key.weight", "blocks.7.ffn.key.weight", name + ".extra", "emb"])] = \
            tensors.pop(name)
    elif kind == 2 and isinstance(value, torch.Tensor):
        shape = _new_shape(list(value.shape), rng)
        count = 1
        for dim in shape:
            count *= max(dim, 0)
        tensors[name] = torch.zeros(shape, dtype=value.dtype) if count <= 1 << 22 else value.flatten()
    elif kind == 3 and isinstance(value, torch.Tensor):
        tensors[name] = value.to(rng.choice([torch.float16, torch.int64, torch.bool, torch.uint8, torch.float64,
                                             torch.complex64]))
    elif kind == 4:
        tensors[name] = rng.choice([3, "text", [1, 2], {"nested": torch.zeros(2)}, None])
    elif kind == 5 and isinstance(value, torch.Tensor) and value.is_floating_point():
        tensors[name] = torch.full_like(value, rng.choice([float("nan"), float("inf"), 1e30, 0.0]))
    elif kind == 6 and isinstance(value, torch.Tensor) and value.dim() == 2:
        tensors[name] = value.T   # not contiguous, and transposed
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def mutate_onnx(data: bytes, rng: random.Random) -> bytes:
    """Edit the graph: an initializer's dims, type or bytes; a node's op, inputs or attributes."""
    import onnx

    if rng.random() < 0.3:
        return mutate_bytes(data, rng)
    try:
        model = onnx.load_from_string(data)
    except Exception:
        return mutate_bytes(data, rng)
    graph = model.graph
    kind = rng.randrange(8)
    if kind == 0 and graph.initializer:
        init = rng.choice(graph.initializer)
        dims = _new_shape(list(init.dims), rng)
        del init.dims[:]
        init.dims.extend(dims)
    elif kind == 1 and graph.initializer:
        rng.choice(graph.initializer).data_type = rng.choice([1, 2, 3, 6, 7, 10, 11, 16, 0, 99])
    elif kind == 2 and graph.initializer:
        init = rng.choice(graph.initializer)
        init.raw_data = init.raw_data[:rng.randrange(len(init.raw_data) + 1)]
    elif kind == 3 and graph.node:
        rng.choice(graph.node).op_type = rng.choice(["Relu", "MatMul", "Gemm", "Conv", "Nope", "QuantizeLinear",
                                                     "Softmax", ""])
    elif kind == 4 and graph.node:
        node = rng.choice(graph.node)
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(["", "missing", graph.input[0].name])
    elif kind == 5 and graph.node:
        del graph.node[rng.randrange(len(graph.node))]
    elif kind == 6 and graph.input:
        dims = graph.input[0].type.tensor_type.shape.dim
        if dims:
            dims[rng.randrange(len(dims))].dim_value = rng.choice([0, 1, 5, 7, 1 << 40])
        graph.input[0].type.tensor_type.elem_type = rng.choice([1, 1, 7, 9, 10])
    elif model.opset_import:
        model.opset_import[0].version = rng.choice([1, 7, 13, 99, 10000])
    return model.SerializeToString()


def mutate_npz(data: bytes, rng: random.Random) -> bytes:
    """Edit the arrays: dtype, shape, values, names; or the bytes of the zip."""
    import numpy as np

    if rng.random() < 0.3:
        return mutate_bytes(data, rng)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception:
        return mutate_bytes(data, rng)
    if not arrays:
        return mutate_bytes(data, rng)
    name = rng.choice(sorted(arrays))
    value = arrays[name]
    kind = rng.randrange(7)
    if kind == 0:
        arrays[name] = value.astype(rng.choice([np.float64, np.int64, np.bool_, np.complex64, "<U3", np.float16]))
    elif kind == 1:
        shape = _new_shape(list(value.shape), rng)
        count = int(np.prod([max(d, 0) for d in shape])) if shape else 1
        arrays[name] = np.zeros(shape, value.dtype) if count <= 1 << 22 else value[:1]
    elif kind == 2 and value.dtype.kind == "f":
        arrays[name] = np.full_like(value, rng.choice([np.nan, np.inf, 1e30]))
    elif kind == 3:
        arrays[rng.choice(["z", "labels", "x2", "input"])] = arrays.pop(name)
    elif kind == 4:
        del arrays[name]
    elif kind == 5:
        arrays[name] = value[:rng.choice([0, 1, 3, 4])]
    else:
        arrays["y"] = np.arange(rng.choice([0, 5, 100]))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


TASK_LINES = ["raise ValueError('bad\\nnews')", "import not_a_module", "task = 3", "def task(x): return x",
              "task = None", "1 / 0", "from edgewise import Nope", "x = ", "    return Task(model)",
              "    return Task(model, eval=(x,), metric='nope')", "    return Task(model, eval=(x, y[:3]))",
              "    return Task('missing.onnx', eval=(x,))", "    return Task(model, eval=(x.astype(str),))",
              "    return Task(model, eval=(x[:, :5], y))", "    raise KeyError('k')", "task = task()"]


def mutate_task(data: bytes, rng: random.Random) -> bytes:
    """Edit a task file: a line replaced, deleted or repeated; or its bytes."""
    if rng.random() < 0.25:
        return mutate_bytes(data, rng)
    lines = data.decode("utf-8", "replace").splitlines()
    at = rng.randrange(len(lines))
    kind = rng.randrange(3)
    if kind == 0:
        lines[at] = rng.choice(TASK_LINES)
    elif kind == 1:
        del lines[at]
    else:
        lines.append(rng.choice(TASK_LINES))
    return ("\n".join(lines) + "\n").encode()


# -- targets: what each command does with a file --------------------------------------------------

class Finding(Exception):
    """An outcome that is neither success nor one clear line."""


def _cli(*argv: str) -> str:
    """Run the `edgewise` command in this process: "ok", or "refused" on exit 2 with one line."""
    from edgewise.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    text = err.getvalue()
    if "Traceback" in text:
        raise Finding(f"exit {code} with a traceback: {text[-1500:]}")
    if code == 0:
        return "ok"
    lines = [line for line in text.splitlines() if line.startswith("edgewise: error:")]
    if code == 2 and len(lines) == 1 and len(text.strip().splitlines()) == 1:
        return "refused"
    raise Finding(f"exit {code}, stderr {text[-1500:]!r}")


def _api(call: Callable[[], object]) -> str:
    """Call the API: "ok", or "refused" on an EdgewiseError of one line."""
    from edgewise.errors import EdgewiseError

    try:
        call()
    except EdgewiseError as exc:
        if "\n" in str(exc) or not str(exc):
            raise Finding(f"an EdgewiseError that is not one line: {str(exc)!r}") from None
        return "refused"
    return "ok"


def _targets(seeds: dict[str, Path], work: Path) -> dict[str, tuple[str, Callable, Callable[[Path], str]]]:
    """name -> (seed kind, mutator, run(path) -> outcome)."""
    from edgewise.load import load_task, resolve_targets
    from edgewise.rwkv import RWKV, RWKVState

    def weights(path: Path) -> str:
        return _api(lambda: resolve_targets([str(path)], load_task(task_spec=f"{seeds['task.py']}:task"), work))

    def rwkv_generate(path: Path) -> str:
        return _cli("rwkv", "generate", str(path), "--prompt", "!~", "--max-tokens", "3", "--seed", "0")

    def rwkv_state(path: Path) -> str:
        model = _state_model()
        return _api(lambda: model.forward([1, 2], RWKVState.load(path), use_cache=False))

    @functools.cache
    def _state_model():
        return RWKV.load(seeds["rwkv.pth"])

    return {
        "onnx: bench": ("model.onnx", mutate_onnx, lambda p: _cli("bench", str(p), "--seconds", "0.1", "--json")),
        "onnx: optimize --onnx": ("model.onnx", mutate_onnx,
                                  lambda p: _api(lambda: load_task(onnx=str(p), data=str(seeds["data.npz"])))),
        "npz: optimize --data": ("data.npz", mutate_npz,
                                 lambda p: _api(lambda: load_task(onnx=str(seeds["model.onnx"]), data=str(p)))),
        "task file: --task": ("task.py", mutate_task, lambda p: _api(lambda: load_task(task_spec=f"{p}:task"))),
        "weights .pt: bench": ("weights.pt", mutate_torch, weights),
        "weights .safetensors: bench": ("weights.safetensors", mutate_safetensors, weights),
        "rwkv .pth: generate": ("rwkv.pth", mutate_torch, rwkv_generate),
        "rwkv .pth: generate --quant int4": ("rwkv.pth", mutate_torch,
                                             lambda p: _cli("rwkv", "generate", str(p), "--prompt", "!~",
                                                            "--max-tokens", "2", "--quant", "int4")),
        "rwkv .pth: convert": ("rwkv.pth", mutate_torch,
                               lambda p: _cli("rwkv", "convert", str(p), "--out", str(work / "converted.safetensors"),
                                              "--quant", "int8")),
        "rwkv .safetensors: generate": ("rwkv.safetensors", mutate_safetensors, rwkv_generate),
        "rwkv converted int8: generate": ("rwkv-int8.safetensors", mutate_safetensors, rwkv_generate),
        "rwkv converted int4: bench": ("rwkv-int4.safetensors", mutate_safetensors,
                                       lambda p: _cli("rwkv", "bench", str(p), "--prompt-tokens", "4",
                                                      "--decode-tokens", "2", "--json")),
        "rwkv state: forward": ("state.safetensors", mutate_safetensors, rwkv_state),
    }


def _canary(path: Path) -> str:
    """A target that fails every way the harness must catch (its self-test), chosen by the
    mutant's checksum: a crash, a hang, a traceback, a multi-line error, or success."""
    import zlib

    from edgewise.errors import EdgewiseError

    way = zlib.crc32(path.read_bytes()) % 8
    if way == 0:
        os.abort()
    if way == 1:
        time.sleep(10**6)
    if way in (2, 3):
        raise KeyError("a traceback")
    if way in (4, 5):
        return _api(lambda: (_ for _ in ()).throw(EdgewiseError("two\nlines")))
    return "ok"


def _chosen(targets: dict) -> dict:
    """EDGEWISE_FUZZ_TARGETS="a,b" keeps the targets whose names contain a or b; "canary" is the
    harness's self-test."""
    wanted = [w for w in os.environ.get("EDGEWISE_FUZZ_TARGETS", "").split(",") if w]
    if wanted == ["canary"]:
        return {"canary": ("task.py", mutate_bytes, _canary)}
    return {name: t for name, t in targets.items() if not wanted or any(w in name for w in wanted)}


# -- the loop (child) and its supervisor (parent) ------------------------------------------------

def child(workdir: Path, seed: int, seconds: float, start: int) -> None:
    """Run mutants from input number `start` until `seconds` pass, one line per input appended to
    <workdir>/log.jsonl (so that a crash loses nothing but the input it crashed on)."""
    import warnings

    warnings.filterwarnings("ignore")
    seeds = make_seeds(workdir / "seeds")
    cases = workdir / "cases"
    cases.mkdir(exist_ok=True)
    run_dir = workdir / "run"
    targets = _chosen(_targets(seeds, run_dir))
    names = sorted(targets)
    originals = {kind: path.read_bytes() for kind, path in seeds.items()}
    deadline = time.monotonic() + seconds
    index = start
    with open(workdir / "log.jsonl", "a") as log:
        while time.monotonic() < deadline:
            name = names[index % len(names)]
            kind, mutate, run = targets[name]
            rng = random.Random(f"{seed}:{index}")
            data, is_seed = originals[kind], index // len(names) % 16 == 0   # every 16th round: the seed itself
            if not is_seed:
                for _ in range(rng.choice([1, 1, 2, 3])):
                    try:
                        data = mutate(data, rng)
                    except Exception:   # a mutator that cannot parse its own output: bytes will do
                        data = mutate_bytes(data, rng)
            case = cases / f"{index}{Path(kind).suffix}"
            case.write_bytes(data)
            (workdir / "current.json").write_text(json.dumps({"index": index, "target": name, "case": str(case)}))
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir()
            record = {"index": index, "target": name}
            faulthandler.dump_traceback_later(PER_INPUT_SECONDS, exit=True)
            try:
                record["outcome"] = run(case)
            except Finding as exc:
                record.update(outcome="traceback", detail=str(exc))
            except BaseException as exc:   # noqa: BLE001 - every escape is a finding, even SystemExit
                record.update(outcome="traceback", detail="".join(traceback.format_exception(exc))[-2000:])
            finally:
                faulthandler.cancel_dump_traceback_later()
            if record["outcome"] not in ("ok", "refused"):
                record["case"] = str(_keep_finding(workdir, case, name))
            elif is_seed and record["outcome"] != "ok":   # the harness's seeds must run
                record.update(outcome="seed refused", case=str(_keep_finding(workdir, case, name)))
            log.write(json.dumps(record) + "\n")
            log.flush()
            case.unlink()
            index += 1


def _keep_finding(workdir: Path, case: Path, target: str) -> Path:
    folder = workdir / "findings"
    folder.mkdir(exist_ok=True)
    saved = folder / f"{target.split(':')[0].replace(' ', '_')}-{case.name}"
    shutil.copy(case, saved)
    return saved


def fuzz(workdir: Path, seconds: float, seed: int = 0) -> dict:
    """Fuzz for `seconds` (in child processes, a new one after a crash or hang): counts per target
    and outcome, findings (with their inputs kept), inputs run."""
    workdir.mkdir(parents=True, exist_ok=True)
    log, started = workdir / "log.jsonl", time.monotonic()
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    index = 0
    while (left := seconds - (time.monotonic() - started)) > 1:
        (workdir / "current.json").unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-m", "tests.fuzzing", "--child", "--workdir", str(workdir),
                               "--seed", str(seed), "--seconds", str(left), "--start", str(index)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=left + 300)
        current = json.loads((workdir / "current.json").read_text()) if (workdir / "current.json").exists() else None
        records = _records(log)
        index = records[-1]["index"] + 1 if records else index
        if done.returncode == 0:
            continue
        if current is None or not Path(current["case"]).exists():   # the seeds or the harness, not an input
            raise RuntimeError(f"the fuzzing child failed outside an input: {done.stderr[-3000:]}")
        outcome = "hang" if "Timeout (" in done.stderr else "crash"
        with open(log, "a") as out:
            out.write(json.dumps({"index": current["index"], "target": current["target"], "outcome": outcome,
                                  "case": str(_keep_finding(workdir, Path(current["case"]), current["target"])),
                                  "detail": f"exit {done.returncode}: {done.stderr[-2000:]}"}) + "\n")
        index = current["index"] + 1
    records = _records(log)
    per_target: dict[str, Counter] = {}
    for record in records:
        per_target.setdefault(record["target"], Counter())[record["outcome"]] += 1
    return {"inputs": len(records), "seconds": round(time.monotonic() - started),
            "per_target": {t: dict(c) for t, c in sorted(per_target.items())},
            "findings": [r for r in records if r["outcome"] not in ("ok", "refused")]}


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def replay(files: list[Path], workdir: Path) -> int:
    """Run saved inputs through every target that reads their kind of file; print each outcome."""
    targets = _targets(make_seeds(workdir / "seeds"), workdir / "run")
    failures = 0
    for path in files:
        for name, (kind, _, run) in sorted(targets.items()):
            if Path(kind).suffix != path.suffix:
                continue
            shutil.rmtree(workdir / "run", ignore_errors=True)
            (workdir / "run").mkdir()
            try:
                outcome = run(path)
            except BaseException as exc:   # noqa: BLE001
                outcome, failures = f"traceback: {''.join(traceback.format_exception(exc))[-800:]}", failures + 1
            print(f"{path.name} | {name}: {outcome}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--replay", type=Path, nargs="+", help="run these saved inputs instead of fuzzing")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.workdir, args.seed, args.seconds, args.start)
        return
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgewise-fuzz-"))
    if args.replay:
        sys.exit(1 if replay(args.replay, workdir) else 0)
    result = fuzz(workdir, args.minutes * 60, args.seed)
    print(json.dumps(result, indent=2))
    print(f"{result['inputs']} inputs in {result['seconds']} s; {len(result['findings'])} findings "
          f"(kept in {workdir / 'findings'})")
    sys.exit(1 if result["findings"] else 0)


if __name__ == "__main__":
    main()
