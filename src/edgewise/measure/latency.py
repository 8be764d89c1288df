"""Latency: warm-up, then runs interleaved across models so drift on a noisy machine hits all alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Percentiles:
    """Latency percentiles, in the unit the field holding them names."""

    p50: float
    p90: float
    p99: float


@dataclass
class Timing:
    """Wall-clock latency of each call and the process CPU time they consumed, in seconds."""

    latencies_s: np.ndarray
    cpu_s: float
    energy_j: float | None = None  # from a hardware meter, when one was given

    @property
    def calls(self) -> int:
        return len(self.latencies_s)

    def percentiles_ms(self) -> Percentiles:
        p50, p90, p99 = np.percentile(self.latencies_s * 1e3, [50, 90, 99])
        return Percentiles(float(p50), float(p90), float(p99))

    @property
    def cpu_s_per_call(self) -> float:
        return self.cpu_s / max(1, self.calls)


def interleaved(runners: list[Callable[[], object]], *, warmup: int = 10, seconds: float = 2.0,
                min_calls: int = 20, max_calls: int = 5000, block_s: float = 0.2,
                meter: Callable[[], float] | None = None, settle_s: float = 0.05) -> list[Timing]:
    """Time each runner (one inference call each) in alternating blocks: A B A B ...

    Every runner gets `warmup` untimed calls, then rounds in which each runs consecutive calls for
    about `block_s`, until each has used its share of `seconds` and made at least `min_calls`.
    CPU time is the process's (all threads), measured around each block; so is the energy of
    `meter` (a cumulative joule counter such as RAPL) when given. Before each block the runner
    waits `settle_s`, so the thread pool of the previous runner stops spinning (ONNX Runtime's
    workers spin after a run) instead of stealing cores from the next one.
    """
    per_call = []
    for run in runners:
        for _ in range(warmup):
            run()
        start = time.perf_counter()
        run()
        per_call.append(max(time.perf_counter() - start, 1e-6))
    budget = seconds / len(runners)
    latencies: list[list[float]] = [[] for _ in runners]
    cpu = [0.0] * len(runners)
    energy = [0.0] * len(runners)
    spent = [0.0] * len(runners)
    while any(_wants_more(latencies[i], spent[i], budget, min_calls, max_calls) for i in range(len(runners))):
        for i, run in enumerate(runners):
            if not _wants_more(latencies[i], spent[i], budget, min_calls, max_calls):
                continue
            calls = max(1, min(int(block_s / per_call[i]), max_calls - len(latencies[i])))
            time.sleep(settle_s)
            cpu_start = time.process_time()
            energy_start = meter() if meter else 0.0
            for _ in range(calls):
                start = time.perf_counter()
                run()
                elapsed = time.perf_counter() - start
                latencies[i].append(elapsed)
                spent[i] += elapsed
            cpu[i] += time.process_time() - cpu_start
            energy[i] += (meter() - energy_start) if meter else 0.0
    return [Timing(np.asarray(lat), cpu_s, energy_j if meter else None)
            for lat, cpu_s, energy_j in zip(latencies, cpu, energy)]


def _wants_more(latencies: list[float], spent: float, budget: float, min_calls: int, max_calls: int) -> bool:
    if len(latencies) >= max_calls:
        return False
    return len(latencies) < min_calls or spent < budget
