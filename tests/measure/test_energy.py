import pytest

from edgewise.errors import EdgewiseError
from edgewise.measure import energy


def test_estimate_is_cpu_seconds_times_watts():
    # 2 ms of busy-core time at 4 W is 8 mJ.
    assert energy.estimate_energy_j(0.002, 4.0) == pytest.approx(0.008)


def test_cost_from_core_hours_by_hand():
    # 1 ms of CPU per inference -> 1e6 inferences use 1000 core-seconds = 0.2778 core-hours; at $0.05: $0.013889.
    prices = energy.Prices(usd_per_core_hour=0.05)
    assert energy.cost_usd_per_million(energy_j=0.004, cpu_s=0.001, prices=prices) == pytest.approx(0.0138889, rel=1e-5)
    assert prices.cost_method == "core-hours"


def test_cost_from_energy_when_a_kwh_price_is_given():
    # 3.6 J per inference -> 3.6e6 J per million = 1 kWh; at $0.20/kWh: $0.20.
    prices = energy.Prices(usd_per_kwh=0.20)
    assert energy.cost_usd_per_million(energy_j=3.6, cpu_s=123.0, prices=prices) == pytest.approx(0.20)
    assert prices.cost_method == "energy"


def test_co2_by_hand():
    # 0.036 J per inference -> 36,000 J per million = 0.01 kWh; at 480 g/kWh: 4.8 g.
    assert energy.co2e_g_per_million(0.036, energy.Prices()) == pytest.approx(4.8)
    assert energy.co2e_g_per_million(0.036, energy.Prices(grid_g_per_kwh=50)) == pytest.approx(0.5)


def test_negative_prices_and_unknown_profiles_are_refused():
    with pytest.raises(EdgewiseError, match="grid-g-per-kwh must be >= 0"):
        energy.Prices(grid_g_per_kwh=-1)
    with pytest.raises(EdgewiseError, match="unknown device profile 'toaster'.*server-x86"):
        energy.profile("toaster")


def test_rapl_meter_sums_packages_and_handles_wraparound(tmp_path):
    for index, start in ((0, 1_000_000), (1, 5_000_000)):
        domain = tmp_path / f"intel-rapl:{index}"
        domain.mkdir()
        (domain / "energy_uj").write_text(str(start))
        (domain / "max_energy_range_uj").write_text("10000000")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain (core): not counted twice
    meter = energy.rapl_meter(tmp_path)
    assert meter() == 0.0
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("3000000")    # +2 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("500000")     # wrapped: +5.5 J
    assert meter() == pytest.approx(7.5)


def test_no_powercap_means_no_meter(tmp_path):
    assert energy.rapl_meter(tmp_path / "absent") is None
