"""Energy, money and CO2 per inference.

Energy is read from Linux RAPL (/sys/class/powercap) where the machine exposes it, else estimated
from measured CPU time and the busy-core power of a named device profile. Every figure carries
its method (`rapl` or `estimate`): an estimate is never presented as a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgewise.errors import EdgewiseError

JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class DeviceProfile:
    """Power drawn per busy CPU core, in watts, above idle: the basis of the energy estimate."""

    name: str
    watts_per_core: float
    basis: str


def _profiles() -> dict[str, DeviceProfile]:
    """One per device profile of edgewise.targets (and its aliases): power above idle per busy core."""
    from edgewise.targets.profiles import all_profiles

    found = {}
    for t in all_profiles():
        active, idle = t.power_active_w, t.power_idle_w
        basis = (f"{t.title}: ({active.value:g} W busy, {active.kind}, - {idle.value:g} W idle, {idle.kind}) / "
                 f"{t.cores.value:g} cores; edgewise targets show {t.name}")
        for name in (t.name, *t.aliases):
            found[name] = DeviceProfile(name, round(t.watts_per_core, 2), basis)
    return found


PROFILES = _profiles()
DEFAULT_PROFILE = "server-x86"


@dataclass(frozen=True)
class Prices:
    """What a million inferences cost and emit.

    Args:
        usd_per_core_hour: cloud price of one busy core (vCPU) for an hour; default 0.05, about an
            on-demand x86 vCPU-hour (e.g. AWS c7a, 2024). Used unless `usd_per_kwh` is given.
        usd_per_kwh: price of electricity; when given, cost is energy x this price instead.
        grid_g_per_kwh: grid carbon intensity, g CO2e per kWh; default 480, the world average
            of 2023 (Ember, Global Electricity Review 2024).
    """

    usd_per_core_hour: float = 0.05
    usd_per_kwh: float | None = None
    grid_g_per_kwh: float = 480.0

    def __post_init__(self) -> None:
        for name in ("usd_per_core_hour", "usd_per_kwh", "grid_g_per_kwh"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise EdgewiseError(f"{name.replace('_', '-')} must be >= 0, got {value}")

    @property
    def cost_method(self) -> str:
        return "energy" if self.usd_per_kwh is not None else "core-hours"


def profile(name: str) -> DeviceProfile:
    if name not in PROFILES:
        raise EdgewiseError(f"unknown device profile {name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


def estimate_energy_j(cpu_s: float, watts_per_core: float) -> float:
    """Joules for `cpu_s` seconds of busy-core time at `watts_per_core`."""
    return cpu_s * watts_per_core


def cost_usd_per_million(energy_j: float, cpu_s: float, prices: Prices) -> float:
    """Dollars per million inferences, from per-inference energy (J) and CPU time (s)."""
    if prices.usd_per_kwh is not None:
        return energy_j * 1e6 / JOULES_PER_KWH * prices.usd_per_kwh
    return cpu_s * 1e6 / 3600.0 * prices.usd_per_core_hour


def co2e_g_per_million(energy_j: float, prices: Prices) -> float:
    """Grams CO2e per million inferences from per-inference energy (J)."""
    return energy_j * 1e6 / JOULES_PER_KWH * prices.grid_g_per_kwh


class RaplMeter:
    """Cumulative package energy in joules from /sys/class/powercap, wrap-around handled."""

    def __init__(self, root: str | Path = "/sys/class/powercap") -> None:
        self.domains = [d for d in sorted(Path(root).glob("intel-rapl:*"))
                        if d.name.count(":") == 1 and (d / "energy_uj").is_file()]
        self._last = [self._read(d) for d in self.domains]
        self._total_j = 0.0

    @staticmethod
    def _read(domain: Path) -> int:
        return int((domain / "energy_uj").read_text())

    def __call__(self) -> float:
        for i, domain in enumerate(self.domains):
            now = self._read(domain)
            delta = now - self._last[i]
            if delta < 0:  # the counter wrapped
                delta += int((domain / "max_energy_range_uj").read_text())
            self._total_j += delta / 1e6
            self._last[i] = now
        return self._total_j


def rapl_meter(root: str | Path = "/sys/class/powercap") -> RaplMeter | None:
    """A RAPL meter if this machine exposes readable package counters, else None."""
    try:
        meter = RaplMeter(root)
    except (OSError, ValueError):
        return None
    return meter if meter.domains else None
