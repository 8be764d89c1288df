"""Device profiles: what a target device is, as data, every number with its kind and its source.

One TOML file per device in `profiles/`. A number is `{ value, kind, source }`, kind one of
vendor (the maker's published figure), derived (computed from vendor figures; the source shows the
arithmetic) or measured (timed on the device). `host` is not a file: `edgewise targets calibrate`
measures this machine and caches the result per CPU (see calibrate.py).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgewise.errors import EdgewiseError

FOLDER = Path(__file__).with_name("profiles")
KINDS = ("vendor", "derived", "measured")
CLASSES = ("board", "phone", "laptop", "desktop", "server", "mcu", "host")
RUNTIMES = ("onnxruntime", "tflite-micro")
EXPORTS = ("executorch",)   # formats edgewise writes beside ONNX (targets.export), checked on the host
NUMBERS = ("cores", "clock_ghz", "peak_gops_fp32", "peak_gops_int8", "bandwidth_gbs", "cache_bytes",
           "power_active_w", "power_idle_w")


@dataclass(frozen=True)
class Figure:
    """A number and where it comes from."""

    value: float
    kind: str
    source: str

    def to_json(self) -> dict:
        return {"value": self.value, "kind": self.kind, "source": self.source}


@dataclass(frozen=True)
class Region:
    """A block of memory with one address range: a tensor arena or a weight blob must fit in one."""

    name: str
    bytes: Figure


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    device_class: str
    arch: str
    isa: tuple[str, ...]
    dtypes: tuple[str, ...]
    runtime: str
    weights_in: str                     # "ram" (loaded) or "flash" (read in place)
    exports: tuple[str, ...]            # other runtimes the device commonly runs that edgewise can export to
    cores: Figure
    clock_ghz: Figure
    peak_gops_fp32: Figure
    peak_gops_int8: Figure
    bandwidth_gbs: Figure
    cache_bytes: Figure                 # the last-level cache: weights that fit stay there run after run
    power_active_w: Figure
    power_idle_w: Figure
    ram: tuple[Region, ...]
    flash: tuple[Region, ...]
    runtime_flash: Figure
    runtime_ram: Figure
    aliases: tuple[str, ...] = ()
    calibration: dict = field(default_factory=dict, compare=False)   # host only: the measured efficiencies

    @property
    def watts_per_core(self) -> float:
        """Power above idle per busy core: the basis of an energy estimate from CPU time."""
        return (self.power_active_w.value - self.power_idle_w.value) / max(self.cores.value, 1)

    def peak_gops(self, dtype: str) -> float:
        return (self.peak_gops_int8 if dtype == "int8" else self.peak_gops_fp32).value

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "class": self.device_class, "arch": self.arch,
                "isa": list(self.isa), "dtypes": list(self.dtypes), "runtime": self.runtime,
                "weights_in": self.weights_in, "exports": list(self.exports), "aliases": list(self.aliases),
                **{n: getattr(self, n).to_json() for n in NUMBERS},
                "ram": [{"name": r.name, "bytes": r.bytes.to_json()} for r in self.ram],
                "flash": [{"name": r.name, "bytes": r.bytes.to_json()} for r in self.flash],
                "runtime_cost": {"flash_bytes": self.runtime_flash.to_json(), "ram_bytes": self.runtime_ram.to_json()}}


def _figure(raw, where: str) -> Figure:
    if not isinstance(raw, dict) or set(raw) != {"value", "kind", "source"}:
        raise EdgewiseError(f"{where}: expected {{ value = ..., kind = ..., source = ... }}")
    value, kind, source = raw["value"], raw["kind"], raw["source"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise EdgewiseError(f"{where}: value must be a number >= 0, got {value!r}")
    if kind not in KINDS:
        raise EdgewiseError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(source, str) or not source.strip():
        raise EdgewiseError(f"{where}: every number needs its source")
    return Figure(float(value), kind, source)


def _regions(raw, where: str) -> tuple[Region, ...]:
    if not isinstance(raw, list) or not raw:
        raise EdgewiseError(f"{where}: expected at least one [[{where.rsplit('.', 1)[-1]}]] region")
    return tuple(Region(str(r.get("name", "?")), _figure(r.get("bytes"), f"{where}.{r.get('name', '?')}"))
                 for r in raw)


def parse(raw: dict, where: str) -> Target:
    """A profile from its parsed TOML; `where` names it in errors."""
    try:
        for key in ("name", "title", "class", "arch", "runtime", "weights_in"):
            if not isinstance(raw.get(key), str):
                raise EdgewiseError(f"{where}: {key} must be a string")
        if raw["class"] not in CLASSES:
            raise EdgewiseError(f"{where}: class must be one of {', '.join(CLASSES)}")
        if raw["runtime"] not in RUNTIMES:
            raise EdgewiseError(f"{where}: runtime must be one of {', '.join(RUNTIMES)}")
        if raw["weights_in"] not in ("ram", "flash"):
            raise EdgewiseError(f"{where}: weights_in must be ram or flash")
        exports = tuple(raw.get("exports", ()))
        if any(e not in EXPORTS for e in exports):
            raise EdgewiseError(f"{where}: exports must be among {', '.join(EXPORTS)}")
        cost = raw.get("runtime_cost") or {}
        return Target(
            name=raw["name"], title=raw["title"], device_class=raw["class"], arch=raw["arch"],
            isa=tuple(raw.get("isa", ())), dtypes=tuple(raw.get("dtypes", ("fp32",))), runtime=raw["runtime"],
            weights_in=raw["weights_in"], exports=exports, aliases=tuple(raw.get("aliases", ())),
            **{n: _figure(raw.get(n), f"{where}: {n}") for n in NUMBERS},
            ram=_regions(raw.get("ram"), f"{where}: ram"), flash=_regions(raw.get("flash"), f"{where}: flash"),
            runtime_flash=_figure(cost.get("flash_bytes"), f"{where}: runtime_cost.flash_bytes"),
            runtime_ram=_figure(cost.get("ram_bytes"), f"{where}: runtime_cost.ram_bytes"),
            calibration=raw.get("calibration", {}))
    except (KeyError, TypeError, AttributeError) as exc:
        raise EdgewiseError(f"{where}: malformed profile ({exc})") from None


def _files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(FOLDER.glob("*.toml"))}


def names() -> list[str]:
    """Every target: the profiles shipped, then `host`."""
    return [*_files(), "host"]


def load(name: str) -> Target:
    """The named target (a profile's name or alias, or `host`)."""
    if name == "host":
        from edgewise.targets.calibrate import host

        return host()
    files = _files()
    for stem, path in files.items():
        if name == stem:
            return _read(path)
    for path in files.values():
        target = _read(path)
        if name in target.aliases:
            return target
    raise EdgewiseError(f"unknown target {name!r}: choose one of {', '.join(names())} (`edgewise targets list`)")


def _read(path: Path) -> Target:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EdgewiseError(f"{path}: cannot read this profile ({exc})") from None
    return parse(raw, path.name)


def all_profiles() -> list[Target]:
    """Every shipped profile (not `host`, which is measured)."""
    return [_read(p) for p in _files().values()]
