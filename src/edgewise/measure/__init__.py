"""Honest measurement: task metric, latency, memory, size, energy, cost and CO2."""
