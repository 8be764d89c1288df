"""Prometheus metrics of one server (its own registry: two servers in one process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, pool_bytes, budget: int, queue_depth) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("edgewise_requests", "Requests answered, by model, route and HTTP status",
                                ["model", "route", "status"], registry=r)
        self.latency = Histogram("edgewise_request_seconds", "Time to the whole answer", ["model", "route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("edgewise_time_to_first_token_seconds", "Time to the first generated text",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("edgewise_tokens", "Tokens read (prompt, of which cached) and generated",
                              ["model", "kind"], registry=r)
        self.energy = Counter("edgewise_energy_joules_estimated",
                              "Energy of the requests: an estimate from CPU time x watts per core of the device profile",
                              ["model"], registry=r)
        self.loads = Counter("edgewise_model_loads", "Models loaded", ["model"], registry=r)
        self.evictions = Counter("edgewise_model_evictions", "Models unloaded", ["model", "reason"], registry=r)
        self.load_seconds = Histogram("edgewise_model_load_seconds", "Time to load a model", ["model"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        resident = Gauge("edgewise_resident_bytes", "Bytes of the resident models, as measured", registry=r)
        resident.set_function(pool_bytes)
        Gauge("edgewise_budget_bytes", "The memory budget", registry=r).set(budget)
        self.queue = Gauge("edgewise_queue_depth", "Requests in flight or waiting, by model", ["model"], registry=r)
        self._queue_depth = queue_depth

    def loaded(self, model: str, seconds: float) -> None:
        self.loads.labels(model).inc()
        self.load_seconds.labels(model).observe(seconds)

    def evicted(self, model: str, reason: str = "budget") -> None:
        self.evictions.labels(model, reason).inc()

    def render(self) -> bytes:
        for model, depth in self._queue_depth().items():
            self.queue.labels(model).set(depth)
        return generate_latest(self.registry)
