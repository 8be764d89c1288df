"""Benchmark ONNX models on ONNX Runtime: the figures every edgewise decision rests on."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from edgewise.errors import EdgewiseError
from edgewise.measure import energy as energy_lib
from edgewise.measure.latency import Percentiles, Timing, interleaved
from edgewise.measure.memory import peak_rss_mb
from edgewise.measure.quality import MetricValue
from edgewise.runtime import onnx as onnx_runtime

if TYPE_CHECKING:
    from edgewise.task import Task


@dataclass
class BenchTarget:
    """One model to measure: an ONNX file and, when known, the task that judges it."""

    name: str
    path: Path
    task: Task | None = None
    export_max_abs_error: float | None = None  # ORT vs torch, when edgewise exported it


@dataclass
class BenchSettings:
    batch_sizes: tuple[int, ...] = (1,)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    seconds: float = 2.0          # timed run per batch size, shared by all models
    warmup: int = 10
    device: str = energy_lib.DEFAULT_PROFILE
    prices: energy_lib.Prices = field(default_factory=energy_lib.Prices)
    measure_memory: bool = True


@dataclass
class BenchResult:
    """Figures for one model at one batch size. Energy, cost and CO2 are per inference (sample).

    `compressed_size_bytes` and `export_max_abs_error` are filled in by compress and optimize.
    """

    model: str
    batch: int
    latency_ms: Percentiles
    throughput_per_s: float
    peak_rss_mb: float | None
    runtime_rss_mb: float | None
    size_bytes: int
    params: int
    metric: MetricValue | None
    energy_j: float
    energy_method: str
    cost_usd_per_million: float
    cost_method: str
    co2e_g_per_million: float
    cpu_ms_per_inference: float
    compressed_size_bytes: int | None = None
    export_max_abs_error: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BenchResult:
        """The inverse of `to_json` (figures stored in a study or a card)."""
        metric = data.get("metric")
        return cls(**{**data, "latency_ms": Percentiles(**data["latency_ms"]),
                      "metric": MetricValue(**metric) if metric else None})


MAX_SYNTHETIC_VALUES = 1 << 28   # 1 GiB of fp32 per input


def synthetic_inputs(sess: ort.InferenceSession, batch: int, sequence: int = 128, seed: int = 0) -> dict:
    """Inputs shaped from the model's signature when no data is known: normal floats, small ints,
    all-ones masks; symbolic dimensions after the first take `sequence`."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in sess.get_inputs():
        shape = [batch if i == 0 else (d if isinstance(d, int) and d > 0 else sequence)
                 for i, d in enumerate(spec.shape)]
        if np.prod(shape, dtype=np.float64) > MAX_SYNTHETIC_VALUES:
            raise EdgewiseError(f"input {spec.name} declares shape {spec.shape}: too large to make up inputs for; "
                                "give data with --example NAME or --task FILE:NAME")
        if "int" in spec.type:
            dtype = np.int64 if "int64" in spec.type else np.int32
            feed[spec.name] = (np.ones(shape, dtype) if "mask" in spec.name.lower()
                               else rng.integers(0, 100, size=shape).astype(dtype))
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def bench(targets: list[BenchTarget], settings: BenchSettings | None = None) -> list[BenchResult]:
    """Measure every target at every batch size, interleaved in one process.

    Returns one BenchResult per (batch size, target), batch-major, targets in the given order.
    """
    settings = settings or BenchSettings()
    sessions = [onnx_runtime.session(t.path, settings.threads) for t in targets]
    # Every model runs once at every batch size before any measurement: one that cannot fails here, in one line.
    feeds_by_batch = {batch: [_checked_feed(t, s, batch) for t, s in zip(targets, sessions)]
                      for batch in settings.batch_sizes}
    metrics = [_metric(t, s) for t, s in zip(targets, sessions)]
    meter = energy_lib.rapl_meter()
    results = []
    for batch, feeds in feeds_by_batch.items():
        runners = [lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds)]
        timings = interleaved(runners, warmup=settings.warmup, seconds=settings.seconds, meter=meter)
        for target, timing, feed, metric in zip(targets, timings, feeds, metrics):
            memory = (peak_rss_mb(target.path, feed, settings.threads) if settings.measure_memory
                      else {"peak_rss_mb": None, "runtime_rss_mb": None})
            results.append(_result(target, batch, timing, memory, metric, settings))
    return results


def _checked_feed(target: BenchTarget, sess: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """The inputs a target is timed on at `batch` (its task's samples, else made up from its
    signature), after one run of the model on them."""
    inputs = target.task.sample_input(batch) if target.task else synthetic_inputs(sess, batch)
    return onnx_runtime.run_once(sess, inputs, f"{target.name} fails on {'its task' if target.task else 'made-up'} "
                                               f"inputs at batch {batch}; check the model's declared inputs")


def _metric(target: BenchTarget, sess: ort.InferenceSession) -> MetricValue | None:
    if target.task is None or target.task.eval is None:
        return None
    return MetricValue(target.task.metric.name, target.task.evaluate(lambda inputs: onnx_runtime.predict(sess, inputs)))


def _result(target: BenchTarget, batch: int, timing: Timing, memory: dict, metric: MetricValue | None,
            settings: BenchSettings) -> BenchResult:
    inferences = timing.calls * batch
    cpu_s = timing.cpu_s / inferences
    if timing.energy_j is not None:
        energy_j, method = timing.energy_j / inferences, "rapl"
    else:
        watts = energy_lib.profile(settings.device).watts_per_core
        energy_j, method = energy_lib.estimate_energy_j(cpu_s, watts), "estimate"
    return BenchResult(
        model=target.name, batch=batch, latency_ms=timing.percentiles_ms(),
        throughput_per_s=batch / float(np.mean(timing.latencies_s)),
        peak_rss_mb=memory["peak_rss_mb"], runtime_rss_mb=memory["runtime_rss_mb"],
        size_bytes=onnx_runtime.size_bytes(target.path), params=onnx_runtime.count_params(target.path),
        metric=metric, energy_j=energy_j, energy_method=method,
        cost_usd_per_million=energy_lib.cost_usd_per_million(energy_j, cpu_s, settings.prices),
        cost_method=settings.prices.cost_method,
        co2e_g_per_million=energy_lib.co2e_g_per_million(energy_j, settings.prices),
        cpu_ms_per_inference=cpu_s * 1e3, export_max_abs_error=target.export_max_abs_error,
    )
