"""A model's estimated latency and energy on a target, from the host's calibration (estimate.py)."""

from __future__ import annotations

from pathlib import Path

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
    return {"model": str(path), "target": chosen.name, "estimated": True, "latency_ms": seconds * 1e3,
            "energy_mj": chosen.power_active_w.value * seconds * 1e3, "power_w": chosen.power_active_w.value,
            "band": calibration["band"],
            "host_latency_ms": host_seconds * 1e3 if host_seconds is not None and chosen.name == "host" else None,
            "top_nodes": [{"op": n.op, "name": n.name, "ms": node_s(n, machine, fitted, scale) * 1e3,
                           "bound": _bound(n, machine)} for n in ranked]}
