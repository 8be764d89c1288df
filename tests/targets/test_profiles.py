import tomllib

import pytest

from edgewise.errors import EdgewiseError
from edgewise.measure import energy
from edgewise.targets.profiles import FOLDER, KINDS, NUMBERS, all_profiles, load, parse

REQUIRED = {"raspberry-pi-5", "jetson-orin-nano", "snapdragon-8-gen-3", "laptop-x86", "server-x86", "stm32h743"}


def test_every_profile_parses_and_every_number_has_a_kind_and_a_source():
    profiles = {t.name: t for t in all_profiles()}
    assert REQUIRED <= set(profiles)
    for t in profiles.values():
        figures = [getattr(t, n) for n in NUMBERS] + [r.bytes for r in t.ram + t.flash] + [t.runtime_flash, t.runtime_ram]
        assert all(f.kind in KINDS and f.source.strip() for f in figures), t.name
        assert t.peak_gops_int8.value >= t.peak_gops_fp32.value > 0 and t.bandwidth_gbs.value > 0


def test_the_microcontroller_has_1_mb_of_ram_in_blocks_the_largest_512_kb():
    mcu = load("stm32h743")
    assert mcu.weights_in == "flash" and mcu.device_class == "mcu"
    assert max(r.bytes.value for r in mcu.ram) == 512 * 1024
    assert 1024 * 1024 <= sum(r.bytes.value for r in mcu.ram) <= 1100 * 1024
    assert mcu.flash[0].bytes.value == 2 * 1024 * 1024


def test_aliases_and_unknown_names():
    assert load("phone-arm").name == "snapdragon-8-gen-3"
    with pytest.raises(EdgewiseError, match="unknown target 'toaster'.*raspberry-pi-5"):
        load("toaster")


def test_a_number_without_its_source_is_refused():
    raw = tomllib.loads((FOLDER / "raspberry-pi-5.toml").read_text())
    raw["bandwidth_gbs"] = {"value": 17.1, "kind": "vendor", "source": " "}
    with pytest.raises(EdgewiseError, match="bandwidth_gbs: every number needs its source"):
        parse(raw, "pi.toml")
    raw["bandwidth_gbs"] = {"value": 17.1, "kind": "guessed", "source": "x"}
    with pytest.raises(EdgewiseError, match="kind must be one of vendor, derived, measured"):
        parse(raw, "pi.toml")


def test_energy_profiles_are_the_targets_busy_power_per_core():
    pi = load("raspberry-pi-5")
    assert energy.profile("raspberry-pi-5").watts_per_core == pytest.approx(
        (pi.power_active_w.value - pi.power_idle_w.value) / pi.cores.value, abs=0.01)
    assert energy.profile("phone-arm").watts_per_core == energy.profile("snapdragon-8-gen-3").watts_per_core
    assert energy.DEFAULT_PROFILE in energy.PROFILES
