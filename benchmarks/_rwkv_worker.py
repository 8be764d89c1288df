"""One measurement in a fresh process (so peak RSS is this model's alone); prints JSON.

    python _rwkv_worker.py reference CHECKPOINT.pth PROMPT DECODE
    python _rwkv_worker.py edgewise MODEL_FILE PROMPT DECODE [QUANT]
    python _rwkv_worker.py bandwidth MODEL_FILE ROUNDS DECODE
"""

import json
import os
import sys
import time

import numpy as np
import torch

from edgewise.measure.memory import own_peak_rss_mb  # light: no ORT, no model code


def reference(path: str, prompt_tokens: int, decode_tokens: int) -> dict:
    os.environ["RWKV_V7_ON"] = "1"
    os.environ.setdefault("RWKV_JIT_ON", "1")
    from rwkv.model import RWKV
    model = RWKV(model=path[: -len(".pth")], strategy="cpu fp32")
    prompt = np.random.default_rng(0).integers(1, 65536, prompt_tokens).tolist()
    model.forward(prompt[:16], None)
    start = time.perf_counter()
    out, state = model.forward(prompt, None)          # the package's own sequence mode
    prefill_s = time.perf_counter() - start
    token = int(out.argmax())
    start = time.perf_counter()
    for _ in range(decode_tokens):
        out, state = model.forward([token], state)
        token = int(out.argmax())
    decode_s = time.perf_counter() - start
    return {"prefill_tokens_per_s": prompt_tokens / prefill_s, "decode_tokens_per_s": decode_tokens / decode_s,
            "peak_rss_mb": own_peak_rss_mb(), "weight_bytes": None}


def edgewise(path: str, prompt_tokens: int, decode_tokens: int, quant: str | None) -> dict:
    from edgewise.rwkv import RWKV
    from edgewise.rwkv.bench import measure
    return measure(RWKV.load(path, quant=quant), prompt_tokens, decode_tokens)


def bandwidth_gb_s(data: torch.Tensor) -> float:
    """Read bandwidth: best of 3 sums over `data` (far larger than the caches)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * data.element_size() / best / 1e9


def bandwidth(path: str, rounds: int, decode_tokens: int) -> dict:
    """Decode blocks with the machine's read bandwidth measured right before and after each
    (it drifts with the other tenants): each block's share of the better neighbouring figure."""
    from edgewise.rwkv import RWKV
    model = RWKV.load(path)
    data = torch.ones(128 * 2**20)   # 512 MB
    logits, state = model.forward([1, 2, 3], use_cache=False)
    token = int(np.argmax(logits))
    for _ in range(8):  # warm-up
        logits, state = model.forward([token], state, use_cache=False)
    samples, speeds = [bandwidth_gb_s(data)], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(decode_tokens):
            logits, state = model.forward([token], state, use_cache=False)
            token = int(np.argmax(logits))
        speeds.append(decode_tokens / (time.perf_counter() - start))
        samples.append(bandwidth_gb_s(data))
    shares = [model.weight_bytes * s / 1e9 / max(samples[k], samples[k + 1]) for k, s in enumerate(speeds)]
    return {"bandwidth_gb_s": samples, "decode_tokens_per_s": speeds, "shares": shares,
            "weight_bytes": model.weight_bytes}


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    kind, path, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if kind == "bandwidth":
        result = bandwidth(path, a, b)
    elif kind == "reference":
        result = reference(path, a, b)
    else:
        result = edgewise(path, a, b, sys.argv[5] if len(sys.argv) > 5 else None)
    print(json.dumps(result))
