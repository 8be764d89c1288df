import numpy as np

from edgewise.measure.latency import Timing, interleaved


def test_every_runner_runs_its_minimum_and_runs_alternate():
    order = []
    runners = [lambda: order.append("a"), lambda: order.append("b")]
    timings = interleaved(runners, warmup=2, seconds=0.0, min_calls=30, block_s=1e-9, settle_s=0)
    assert [t.calls for t in timings] == [30, 30]
    timed = order[6:]  # after 2+1 untimed calls of each (warm-up and probe), blocks alternate
    assert timed[:4] == ["a", "b", "a", "b"]


def test_meter_energy_is_attributed_to_the_runner_that_ran():
    counter = {"j": 0.0}
    runners = [lambda: counter.__setitem__("j", counter["j"] + 1.0), lambda: None]
    timings = interleaved(runners, warmup=0, seconds=0.0, min_calls=5, meter=lambda: counter["j"], settle_s=0)
    assert timings[0].energy_j == timings[0].calls and timings[1].energy_j == 0.0


def test_percentiles_in_milliseconds():
    timing = Timing(latencies_s=np.arange(1, 101) / 1000.0, cpu_s=0.5)
    p = timing.percentiles_ms()
    assert p.p50 == np.percentile(np.arange(1, 101), 50) and p.p99 > p.p90 > p.p50
    assert timing.cpu_s_per_call == 0.005
