"""A model's estimated latency and energy on a target, from the host's calibration (estimate.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgewise.targets.calibrate import calibrate, efficiency, load_calibration, target_machine
from edgewise.targets.estimate import _bound, estimate_s, node_s, profile
from edgewise.targets.profiles import Target, load


def calibration_or_calibrate(progress=None) -> dict:
    found = load_calibration(required=False)
    if found is None:
        if progress:
            progress("this machine is not calibrated yet: calibrating it first (about a minute, once)")
        found = calibrate()
    return found


def predict(path: str | Path, target: str | Target, threads: int | None = None, progress=None,
            nodes=None) -> dict:
    """{"latency_ms", "energy_mj", "band", "top_nodes", ...} of one batch-1 inference of the ONNX model
    at `path` on `target`, every figure an estimate. `nodes` (from estimate.profile) saves profiling
    the same model again."""
    chosen = load(target) if isinstance(target, str) else target
    calibration = calibration_or_calibrate(progress)
    if nodes is None:
        nodes, host_seconds = profile(path, threads)
    else:
        host_seconds = None
    machine = target_machine(chosen, calibration)
    fitted = efficiency(calibration)
    scale = 1.0 if chosen.name == "host" else calibration["clock_ghz"] / max(chosen.clock_ghz.value, 1e-3)
    seconds = estimate_s(nodes, machine, fitted, scale)
    ranked = sorted(nodes, key=lambda n: -node_s(n, machine, fitted, scale))[:5]
    band = calibration["band"]
    return {"model": str(path), "target": chosen.name, "estimated": True, "latency_ms": seconds * 1e3,
            "energy_mj": chosen.power_active_w.value * seconds * 1e3, "power_w": chosen.power_active_w.value,
            "band": band, "estimate": {
                "latency_ms": seconds * 1e3, "low_ms": seconds * 1e3 * band["ratio_p05"],
                "high_ms": seconds * 1e3 * band["ratio_p95"], "energy_j": chosen.power_active_w.value * seconds,
                "method": "estimate: per-node roofline, efficiencies calibrated on this machine's ONNX Runtime "
                          "profiles; low/high hold 90% of the leave-one-family-out ratios measured here"},
            "host_latency_ms": host_seconds * 1e3 if host_seconds is not None and chosen.name == "host" else None,
            "top_nodes": [{"op": n.op, "name": n.name, "ms": node_s(n, machine, fitted, scale) * 1e3,
                           "bound": _bound(n, machine)} for n in ranked]}


# The band's models: (layers, width), each fp32, int8 and int4, a small vocabulary (the head is one more matrix)
RWKV_SHAPES = ((2, 256), (4, 512), (6, 768))
RWKV_VOCAB = 8192


def _host_bandwidth(streamed: int, calibration: dict) -> float:
    """The bandwidth a decode streaming `streamed` bytes a token draws on here: the cache's when they fit."""
    return calibration["cache_bandwidth"] if streamed <= calibration["cache_bytes"] else calibration["bandwidth"]


def _decode_s(model, seconds: float) -> float:
    """Seconds per decode token of `model` on this machine, over at least `seconds` (and 5 tokens)."""
    import time

    logits, state = model.forward([0], use_cache=False)
    for _ in range(3):
        logits, state = model.forward([1], state, use_cache=False)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 5:
        logits, state = model.forward([1], state, use_cache=False)
        count += 1
    return (time.perf_counter() - start) / count


def rwkv_band(calibration: dict, progress=None) -> dict:
    """How far an RWKV decode estimate lands from a measurement here, leave-one-shape-out: each of
    RWKV_SHAPES x (fp32, int8, int4) is estimated from the bandwidth share the other shapes of its
    quantization reached, and measured; {"ratio_p05", "ratio_p95", "median_error", "models",
    "method"} of measured / estimated. Measured once per machine, kept with its calibration."""
    if "rwkv_band" in calibration:
        return calibration["rwkv_band"]
    import tempfile

    from edgewise.files import write_json
    from edgewise.rwkv import RWKV
    from edgewise.rwkv.synthetic import random_checkpoint
    from edgewise.targets.calibrate import cache_path

    if progress:
        progress("measuring how far RWKV decode estimates land here (once, about 20 s)")
    shares: dict[tuple[int, str], float] = {}   # (shape, quantization) -> share of the bandwidth decode reached
    with tempfile.TemporaryDirectory(prefix="edgewise-rwkv-band-") as tmp:
        for shape, (layers, width) in enumerate(RWKV_SHAPES):
            checkpoint = random_checkpoint(Path(tmp) / f"{layers}x{width}.pth", layers=layers, width=width,
                                           vocab=RWKV_VOCAB, ranks=(32, 32, 16, 64))
            for quant in ("fp32", "int8", "int4"):
                model = RWKV.load(checkpoint, quant=None if quant == "fp32" else quant)
                streamed = model.weight_bytes
                shares[shape, quant] = streamed / _decode_s(model, 0.3) / _host_bandwidth(streamed, calibration)
    ratios = [float(np.median([v for (other, q), v in shares.items() if q == quant and other != shape])) / share
              for (shape, quant), share in shares.items()]   # measured time / the time the others' share gives
    band = {"ratio_p05": float(np.percentile(ratios, 5)), "ratio_p95": float(np.percentile(ratios, 95)),
            "median_error": float(np.median(np.abs(np.array(ratios) - 1))), "models": len(ratios),
            "method": f"leave-one-shape-out over {len(RWKV_SHAPES)} shapes x fp32/int8/int4 RWKV-7 decode on this machine"}
    calibration["rwkv_band"] = band
    write_json(cache_path(), calibration)   # atomic, like the calibration itself
    return band


def predict_rwkv(path: str | Path, target: str | Target, seconds: float = 1.0, progress=None) -> dict:
    """Decode tokens/s of an RWKV-7 file on `target`, an estimate: a token streams the model's weights
    once (RWKV.weight_bytes), so it takes weight bytes / (bandwidth x the share of it decode reaches).
    That share is measured here, decoding this model on this machine against its measured bandwidth
    (the cache's when the weights fit in it), and carried over; a token is also at least its
    multiply-adds / the target's peak. The band is how far the share carries from one model to
    another here (rwkv_band)."""
    from edgewise.rwkv import RWKV
    from edgewise.targets.estimate import MEMORY_EFFICIENCY

    chosen = load(target) if isinstance(target, str) else target
    calibration = calibration_or_calibrate(progress)
    band = rwkv_band(calibration, progress)
    model = RWKV.load(path)
    streamed = model.weight_bytes
    host_s = _decode_s(model, seconds)
    host_bandwidth = _host_bandwidth(streamed, calibration)
    share = streamed / host_s / host_bandwidth            # of the bandwidth decode reached here
    macs = streamed / {None: 4, "int8": 1, "int4": 0.5}.get(model.quant, 4)   # one multiply-add per weight
    if chosen.name == "host":
        bandwidth = host_bandwidth
        peak = calibration["theoretical_int8" if model.quant else "theoretical_fp32"]
    else:
        fits = streamed <= chosen.cache_bytes.value
        bandwidth = chosen.bandwidth_gbs.value * 1e9 * MEMORY_EFFICIENCY
        if fits:
            bandwidth *= calibration["cache_bandwidth"] / calibration["bandwidth"]
        peak = chosen.peak_gops(("int8" if model.quant else "fp32")) * 1e9
    # the compute bound, with the matmul kernels' compute efficiency fitted on the zoo (the host's own
    # decode is bound by memory and says nothing of it)
    compute = efficiency(calibration).of(f"matmul/{'int8' if model.quant else 'fp32'}", "compute")
    seconds_per_token = max(streamed / (bandwidth * share), 2 * macs / (peak * compute))
    return {"model": str(path), "target": chosen.name, "estimated": True, "kind": "rwkv", "quant": model.quant or "fp32",
            "weight_bytes_per_token": streamed, "tokens_per_s": 1 / seconds_per_token,
            "ms_per_token": seconds_per_token * 1e3, "energy_mj_per_token": chosen.power_active_w.value * seconds_per_token * 1e3,
            "power_w": chosen.power_active_w.value, "host_tokens_per_s": 1 / host_s, "bandwidth_share": share,
            "method": "weights streamed per token / (the target's bandwidth x the share decode reached on this machine)",
            "band": band,
            "estimate": {"latency_ms": seconds_per_token * 1e3, "low_ms": seconds_per_token * 1e3 * band["ratio_p05"],
                         "high_ms": seconds_per_token * 1e3 * band["ratio_p95"],
                         "energy_j": chosen.power_active_w.value * seconds_per_token,
                         "method": "estimate: one decode token's weight bytes / (the target's bandwidth x the share "
                                   "of it decode reaches on this machine); low/high hold 90% of the "
                                   "leave-one-shape-out ratios measured here"}}
