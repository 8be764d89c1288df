"""One measurement in a fresh process (so peak RSS is this model's alone); prints JSON.

    python _rwkv_worker.py reference CHECKPOINT.pth PROMPT DECODE
    python _rwkv_worker.py edgewise MODEL_FILE PROMPT DECODE [QUANT]
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


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    kind, path, prompt, decode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    quant = sys.argv[5] if len(sys.argv) > 5 else None
    result = reference(path, prompt, decode) if kind == "reference" else edgewise(path, prompt, decode, quant)
    print(json.dumps(result))
