"""Prefill and decode speed, memory and energy of the RWKV runtime."""

from __future__ import annotations

import time

import numpy as np

from edgewise.measure import energy
from edgewise.measure.memory import own_peak_rss_mb
from edgewise.rwkv import native, quant
from edgewise.rwkv.runtime import RWKV


def measure(model: RWKV, prompt_tokens: int = 512, decode_tokens: int = 64, device: str = "server-x86",
            seed: int = 0) -> dict:
    """Tokens/s for a `prompt_tokens` prefill and `decode_tokens` one-at-a-time steps."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(1, model.dims.vocab, prompt_tokens).tolist()
    # warm-up: a prefill long enough to take the GEMM path (whose kind is timed once, at first use),
    # and a decode step (builds the fused decode step)
    logits, warm = model.forward(prompt[:quant.DEQUANTIZE_ROWS + 16], use_cache=False)
    model.forward([int(np.argmax(logits))], warm, use_cache=False)
    wall, cpu = time.perf_counter(), time.process_time()
    logits, state = model.forward(prompt, use_cache=False)
    prefill_s, prefill_cpu = time.perf_counter() - wall, time.process_time() - cpu
    token = int(np.argmax(logits))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(decode_tokens):
        logits, state = model.forward([token], state, use_cache=False)
        token = int(np.argmax(logits))
    decode_s, decode_cpu = time.perf_counter() - wall, time.process_time() - cpu
    watts = energy.profile(device).watts_per_core
    return {
        "quant": model.quant or "fp32", "layers": model.dims.layers, "width": model.dims.width,
        "decode_kernels": native.kernels(native.library() if model.decoder() is not None else None),
        "prefill_gemm": "fp32 (unquantized weights)" if model.quant is None else quant.prefill_gemm(model.quant)[1],
        "prefill_tokens_per_s": prompt_tokens / prefill_s, "decode_tokens_per_s": decode_tokens / decode_s,
        "decode_ms_per_token": decode_s / decode_tokens * 1e3, "peak_rss_mb": own_peak_rss_mb(),
        "weight_bytes": model.weight_bytes, "state_bytes": state.size_bytes,
        "decode_weight_gb_per_s": model.weight_bytes * decode_tokens / decode_s / 1e9,
        "energy_j_per_token": energy.estimate_energy_j(decode_cpu / decode_tokens, watts),
        "prefill_energy_j_per_token": energy.estimate_energy_j(prefill_cpu / prompt_tokens, watts),
        "energy_method": "estimate",
    }
