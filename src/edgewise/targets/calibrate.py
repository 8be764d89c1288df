"""`host`: this machine as a target, measured, not written; and the calibration every estimate uses.

`edgewise targets calibrate` measures, on ONNX Runtime with every core:
- read bandwidth (a reduction over 256 MB), the GEMM throughput per dtype (fp32 MatMul, int8
  MatMulInteger), the overhead of one node and of one run (chains of tiny nodes);
- the zoo (zoo.py, a small sample of it) node by node with ONNX Runtime's profiler, from which each
  kind of node's efficiency against the roofline is fitted (estimate.fit_efficiency), and its error
  band checked leave-one-family-out.
The result is cached per CPU and ONNX Runtime version under the user's cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgewise.errors import EdgewiseError
from edgewise.files import write_json
from edgewise.measure.latency import interleaved
from edgewise.runtime import onnx as onnx_runtime
from edgewise.targets.estimate import MEMORY_EFFICIENCY, Efficiency, Machine, estimate_s, fit_efficiency, profile
from edgewise.targets.profiles import Target, parse

VERSION = 6   # of the cached file's layout (4: the single-layer kernels, gemv apart; 5: typical fixed costs; 6: kinds below their roofline fitted as lines, 1-channel convolutions not depthwise)


def cache_path() -> Path:
    import onnxruntime as ort

    from edgewise.files import cache_dir
    from edgewise.measure.machine import KERNEL_FEATURES, _cpu_model, cpu_flags

    key = json.dumps([_cpu_model(), sorted(f for f in KERNEL_FEATURES if f in cpu_flags()), os.cpu_count(),
                      ort.__version__, VERSION])
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return cache_dir() / "targets" / f"host-{digest}.json"


def _clock_ghz() -> tuple[float, str]:
    for path in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",):
        try:
            return int(Path(path).read_text()) / 1e6, f"{path} (the highest clock)"
        except (OSError, ValueError):
            pass
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("cpu MHz")]
        if mhz:
            return max(mhz) / 1e3, "/proc/cpuinfo cpu MHz (the clock as read, not a published maximum)"
    except OSError:
        pass
    return 2.0, "unknown clock: 2 GHz assumed"


def flops_per_cycle() -> tuple[int, int, str]:
    """(fp32 flop/cycle/core, int8 op/cycle/core, why) from the CPU's instruction sets."""
    from edgewise.measure.machine import cpu_flags

    flags = cpu_flags()
    if "avx512f" in flags:
        vnni = "avx512_vnni" in flags
        return 64, 256 if vnni else 128, "two 512-bit FMA pipes" + (", VNNI int8" if vnni else ", int8 without VNNI")
    if "avx2" in flags and "fma" in flags:
        vnni = "avx_vnni" in flags
        return 32, 128 if vnni else 64, "two 256-bit FMA pipes" + (", AVX-VNNI int8" if vnni else
                                                                      ", int8 by VPMADDUBSW + VPMADDWD (no VNNI)")
    if "asimd" in flags:
        dot = "asimddp" in flags
        return 16, 64 if dot else 32, "two 128-bit NEON FMA pipes" + (", SDOT int8" if dot else "")
    return 8, 16, "SSE2-class: 128-bit multiply and add"


def _figure(value: float, kind: str, source: str) -> dict:
    return {"value": float(value), "kind": kind, "source": source}


# -- micro-benchmarks ---------------------------------------------------------------------
def _timed(fn, seconds: float = 0.5) -> float:
    """Median seconds of a call of `fn`."""
    [timing] = interleaved([fn], warmup=1, seconds=seconds, min_calls=5)
    return float(np.median(timing.latencies_s))


def _model(nodes, inputs, outputs, initializers=()) -> bytes:
    from onnx import helper

    graph = helper.make_graph(nodes, "bench", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def bandwidth_bytes_s(mb: float = 256) -> float:
    import torch

    x = torch.ones(int(mb * 2**20) // 4)
    return x.numel() * 4 / _timed(lambda: x.sum())


def cache_bytes() -> tuple[int, str]:
    """The last-level cache's size (Linux sysfs), and where it was read."""
    best = 0
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            text = (index / "size").read_text().strip()
            size = int(text[:-1]) * {"K": 2**10, "M": 2**20}[text[-1]] if text[-1] in "KM" else int(text)
            best = max(best, size)
        except (OSError, ValueError):
            pass
    return best, "/sys/devices/system/cpu/cpu0/cache (the largest level)"


def gemm_ops_s(dtype: str, m: int = 256, k: int = 1024, n: int = 1024) -> float:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if dtype == "fp32":
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x = rng.standard_normal((m, k)).astype(np.float32)
        model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [w])
    else:
        w = numpy_helper.from_array(rng.integers(-127, 127, (k, n)).astype(np.int8), "w")
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
        x = rng.integers(0, 255, (m, k)).astype(np.uint8)
        model = _model([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])],
                       [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])], [w])
    session = onnx_runtime.session(model)
    return 2.0 * m * k * n / _timed(lambda: session.run(None, {"x": x}))


def chain_model(count: int) -> tuple[bytes, np.ndarray]:
    """A graph of `count` chained one-element Adds, and its input: nothing but overhead."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Add", ["x" if i == 0 else f"t{i - 1}", "x"], [f"t{i}" if i < count - 1 else "y"])
             for i in range(count)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]), np.ones(1, np.float32)


def overheads_s(count: int = 200, threads: int | None = None) -> tuple[float, float]:
    """(seconds per extra node, seconds of a one-node run) of tiny Add chains."""
    def chain(n):
        model, x = chain_model(n)
        session = onnx_runtime.session(model, threads)
        return _timed(lambda: session.run(None, {"x": x}))
    one, many = chain(1), chain(count)
    return max((many - one) / (count - 1), 1e-7), one


def runtime_costs() -> tuple[int, int]:
    """(bytes of ONNX Runtime's shared libraries, resident bytes it adds with one session loaded)."""
    import onnxruntime as ort

    capi = Path(ort.__file__).parent / "capi"
    size = sum(p.stat().st_size for p in capi.glob("*.so*"))
    code = ("import psutil, numpy; p = psutil.Process(); a = p.memory_info().rss\n"
            "import onnxruntime as ort\nfrom onnx import TensorProto, helper\n"
            "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', "
            "[helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])], "
            "[helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])\n"
            "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]); m.ir_version = 8\n"
            "s = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])\n"
            "s.run(None, {'x': numpy.ones(1, 'float32')}); print(p.memory_info().rss - a)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    ram = int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 40_000_000
    return size, ram


# -- calibration ----------------------------------------------------------------------------
def host_machine(calibration: dict) -> Machine:
    return Machine({"fp32": calibration["theoretical_fp32"], "int8": calibration["theoretical_int8"]},
                   calibration["bandwidth"], calibration["node_overhead"], calibration["run_overhead"],
                   calibration["cache_bytes"], calibration["cache_bandwidth"])


def target_machine(target: Target, calibration: dict) -> Machine:
    """The roofline of a profiled target: its peaks, MEMORY_EFFICIENCY of its bandwidth, and the host's
    overheads scaled by the clocks (a derived figure: the same code path, fewer cycles a second)."""
    if target.name == "host":
        return host_machine(calibration)
    scale = calibration["clock_ghz"] / max(target.clock_ghz.value, 1e-3)
    bandwidth = target.bandwidth_gbs.value * 1e9 * MEMORY_EFFICIENCY
    return Machine({"fp32": target.peak_gops_fp32.value * 1e9, "int8": target.peak_gops_int8.value * 1e9},
                   bandwidth, calibration["node_overhead"] * scale, calibration["run_overhead"] * scale,
                   target.cache_bytes.value, bandwidth * calibration["cache_bandwidth"] / calibration["bandwidth"])


def leave_one_family_out(measured: dict[str, list], machine: Machine) -> dict:
    """Each family's models estimated with efficiencies fitted on the other families' nodes and the
    single-layer kernels' (zoo.KERNELS: always learnt from, never scored).
    measured: family -> [(name, nodes, latency_s)]. Returns per-model estimates and the error summary."""
    from edgewise.targets.zoo import KERNELS

    rows = []
    for family, models in measured.items():
        if family == KERNELS:
            continue
        others = [n for f, ms in measured.items() if f != family for _, nodes, _ in ms for n in nodes]
        efficiency = fit_efficiency(others, machine)
        for name, nodes, seconds in models:
            rows.append({"family": family, "model": name, "measured_s": seconds,
                         "estimated_s": estimate_s(nodes, machine, efficiency)})
    errors = [abs(r["estimated_s"] - r["measured_s"]) / r["measured_s"] for r in rows]
    ratios = [r["measured_s"] / r["estimated_s"] for r in rows]   # what an estimate is multiplied by to be right
    return {"rows": rows, "median_error": float(np.median(errors)), "p90_error": float(np.percentile(errors, 90)),
            "ratio_p05": float(np.percentile(ratios, 5)), "ratio_p95": float(np.percentile(ratios, 95))}


def calibrate(zoo_folder: str | Path | None = None, quick: bool = True, progress=None, families=None) -> dict:
    """Measure this machine (see the module's docstring); the calibration as a dict (cached by `host`).
    `families` narrows the zoo (at least two: the band is leave-one-family-out)."""
    from edgewise.targets import zoo

    clock, clock_source = _clock_ghz()
    fp32_cycle, int8_cycle, why = flops_per_cycle()
    cores = os.cpu_count() or 1
    node_overhead, run_overhead = overheads_s()
    calibration = {
        "version": VERSION, "cpu": platform.processor() or platform.machine(), "cores": cores,
        "clock_ghz": clock, "clock_source": clock_source, "why": why,
        "theoretical_fp32": cores * clock * 1e9 * fp32_cycle, "theoretical_int8": cores * clock * 1e9 * int8_cycle,
        "measured_fp32": gemm_ops_s("fp32"), "measured_int8": gemm_ops_s("int8"),
        "bandwidth": bandwidth_bytes_s(), "node_overhead": node_overhead, "run_overhead": run_overhead,
    }
    size, where = cache_bytes()
    calibration.update({"cache_bytes": size, "cache_source": where,
                        "cache_bandwidth": bandwidth_bytes_s(min(size / 4, 8 * 2**20) / 2**20) if size else
                        calibration["bandwidth"]})
    machine = host_machine(calibration)
    with tempfile.TemporaryDirectory(prefix="edgewise-zoo-") as tmp:
        folder = Path(zoo_folder or tmp)
        chosen = tuple(families or zoo.FAMILIES)
        if len(chosen) < 2:
            raise EdgewiseError("calibration needs at least two families of models (its band is leave-one-family-out)")
        if quick:
            models = zoo.build(folder, chosen, widths={f: (w[0], w[-1]) for f, w in zoo.WIDTHS.items()},
                               depths={f: d[-1:] for f, d in zoo.DEPTHS.items()}, variants=("fp32", "int8", "int8-dynamic"))
        else:
            models = zoo.build(folder, chosen)
        models += zoo.kernels(folder)
        measured: dict[str, list] = {}
        for m in models:
            nodes, seconds = profile(m.path, runs=10)
            measured.setdefault(m.family, []).append((m.name, nodes, seconds))
            if progress:
                progress(m.name)
    everything = [n for ms in measured.values() for _, nodes, _ in ms for n in nodes]
    calibration["efficiency"] = fit_efficiency(everything, machine).to_json()
    check = leave_one_family_out(measured, machine)
    calibration["band"] = {"median_error": check["median_error"], "p90_error": check["p90_error"],
                           "ratio_p05": check["ratio_p05"], "ratio_p95": check["ratio_p95"],
                           "models": len(check["rows"]),
                           "method": "leave-one-family-out on the calibration zoo (single-layer kernels always learnt from)"}
    size, ram = runtime_costs()
    calibration["runtime_flash_bytes"], calibration["runtime_ram_bytes"] = size, ram
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, calibration)   # atomic: an interrupted calibration leaves none, not half of one
    return calibration


def load_calibration(required: bool = True) -> dict | None:
    path = cache_path()
    try:
        calibration = json.loads(path.read_text())
    except (OSError, ValueError):
        calibration = None
    if calibration is None or calibration.get("version") != VERSION:
        if required:
            raise EdgewiseError("this machine is not calibrated yet: run `edgewise targets calibrate` (about a minute)")
        return None
    return calibration


def efficiency(calibration: dict) -> Efficiency:
    return Efficiency.from_json(calibration["efficiency"])


def host() -> Target:
    """This machine as a target, from its calibration (measured figures say so)."""
    import psutil

    from edgewise.measure import energy

    c = load_calibration()
    watts = energy.profile(energy.DEFAULT_PROFILE).watts_per_core
    raw = {
        "name": "host", "title": f"this machine: {c['cpu']}, {c['cores']} logical cores", "class": "host",
        "arch": platform.machine(), "runtime": "onnxruntime", "weights_in": "ram",
        "isa": [], "dtypes": ["fp32", "int8"],
        "cores": _figure(c["cores"], "measured", "os.cpu_count()"),
        "clock_ghz": _figure(c["clock_ghz"], "measured", c["clock_source"]),
        "peak_gops_fp32": _figure(c["theoretical_fp32"] / 1e9, "derived", f"cores x clock x flop/cycle ({c['why']}); "
                                  f"ONNX Runtime's fp32 MatMul measured {c['measured_fp32'] / 1e9:.0f} GFLOP/s"),
        "peak_gops_int8": _figure(c["theoretical_int8"] / 1e9, "derived", f"cores x clock x op/cycle ({c['why']}); "
                                  f"ONNX Runtime's MatMulInteger measured {c['measured_int8'] / 1e9:.0f} GOP/s"),
        "bandwidth_gbs": _figure(c["bandwidth"] / 1e9, "measured", "a 256 MB reduction, every core"),
        "cache_bytes": _figure(c["cache_bytes"], "measured", f"{c['cache_source']}; read there at "
                               f"{c['cache_bandwidth'] / 1e9:.0f} GB/s (measured)"),
        "power_active_w": _figure(watts * c["cores"], "derived", f"no RAPL here: the {energy.DEFAULT_PROFILE} profile's "
                                  f"{watts:.1f} W per busy core"),
        "power_idle_w": _figure(0, "derived", "counted from busy power only"),
        "ram": [{"name": "RAM", "bytes": _figure(psutil.virtual_memory().total, "measured", "psutil total memory")}],
        "flash": [{"name": "disk", "bytes": _figure(psutil.disk_usage(str(cache_path().parent)).free, "measured",
                                                    "free space where edgewise caches")}],
        "runtime_cost": {"flash_bytes": _figure(c["runtime_flash_bytes"], "measured", "ONNX Runtime's shared libraries"),
                         "ram_bytes": _figure(c["runtime_ram_bytes"], "measured",
                                              "resident memory ONNX Runtime adds with one session loaded")},
        "calibration": c,
    }
    return parse(raw, "host")
