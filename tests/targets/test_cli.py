import json

import numpy as np
import pytest
from torch import nn

from edgewise.cli import main
from edgewise.runtime.onnx import export

ESTIMATE_KEYS = {"latency_ms", "low_ms", "high_ms", "energy_j", "method"}   # issue 13's JSON contract


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A real calibration of this machine on a narrowed zoo (two families), in a cache of its own."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEWISE_CACHE_DIR", str(tmp_path_factory.mktemp("calibration")))
    from edgewise.targets.calibrate import cache_path, calibrate

    calibration = calibrate(families=("mlp", "cnn"))
    yield calibration, cache_path()
    mp.undo()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.onnx"
    export(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval(), np.zeros((1, 64), np.float32), path)
    return path


def test_calibration_is_cached_and_makes_the_host_a_target(calibrated, capsys):
    calibration, path = calibrated
    assert path.is_file() and json.loads(path.read_text())["version"] == calibration["version"]
    assert calibration["band"]["models"] == 10 and calibration["band"]["method"].startswith("leave-one-family-out")
    assert calibration["bandwidth"] > 0 and calibration["measured_fp32"] > 0 and calibration["efficiency"]["by_kind"]
    assert main(["targets", "show", "host", "--json"]) == 0
    host = json.loads(capsys.readouterr().out)
    assert host["bandwidth_gbs"]["kind"] == "measured" and host["cores"]["value"] >= 1
    assert main(["targets", "list", "--json"]) == 0
    assert "host" in [t["name"] for t in json.loads(capsys.readouterr().out)]


def test_estimate_says_it_is_one_and_carries_the_band(calibrated, model, capsys):
    assert main(["targets", "estimate", str(model), "--target", "raspberry-pi-5", "--json"]) == 0
    pi = json.loads(capsys.readouterr().out)
    assert pi["estimated"] and pi["latency_ms"] > 0 and pi["band"]["models"] == 10
    assert pi["energy_mj"] == pytest.approx(pi["power_w"] * pi["latency_ms"])
    e = pi["estimate"]
    assert set(e) == ESTIMATE_KEYS and e["method"].startswith("estimate")
    assert 0 < e["low_ms"] <= e["high_ms"]
    assert e["energy_j"] == pytest.approx(pi["energy_mj"] / 1e3)
    assert main(["targets", "estimate", str(model), "--target", "stm32h743", "--json"]) == 0
    mcu = json.loads(capsys.readouterr().out)
    assert mcu["latency_ms"] > 3 * pi["latency_ms"]   # 0.96 GFLOP/s at 480 MHz against 154 at 2.4 GHz


def test_fit_exit_codes_and_errors(model, tmp_path, capsys):
    assert main(["targets", "fit", str(model), "--target", "stm32h743"]) == 0
    assert "fits" in capsys.readouterr().out
    assert main(["targets", "fit", str(model), "--target", "stm32h743", "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["fits"] and {"flash_bytes", "ram_bytes", "regions"} <= set(fitted)
    assert fitted["flash_bytes"] == sum(p["bytes"] for r in fitted["regions"] if r["memory"] == "flash"
                                        for p in r["pieces"])
    big = tmp_path / "big.onnx"
    export(nn.Linear(1024, 1024).eval(), np.zeros((1, 1024), np.float32), big)   # 4 MB of weights
    assert main(["targets", "fit", str(big), "--target", "stm32h743"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "flash" in out and "short" in out
    assert main(["targets", "fit", str(model), "--target", "toaster"]) == 2
    assert main(["targets", "fit", str(tmp_path / "nope.onnx"), "--target", "stm32h743"]) == 2
    err = capsys.readouterr().err
    assert "unknown target 'toaster'" in err and "no such file or folder" in err and "Traceback" not in err


def test_show_names_every_source(capsys):
    assert main(["targets", "show", "stm32h743"]) == 0
    out = capsys.readouterr().out
    assert "AXI SRAM" in out and "[vendor]" in out and "[derived]" in out


def test_bench_adds_the_estimates_on_a_target(calibrated, model, capsys):
    assert main(["bench", str(model), "--target", "stm32h743", "--seconds", "0.2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [row] = report["on_target"]
    assert row["fits"] and row["estimated"] and row["latency_ms"] > 0 and row["band"]["models"] == 10
    assert set(row["estimate"]) == ESTIMATE_KEYS and 0 < row["estimate"]["low_ms"] <= row["estimate"]["high_ms"]
    assert row["flash_bytes"] > 64 * 64 * 4 and row["ram_bytes"] > 0 and row["regions"]
    [result] = report["results"]   # the measured result carries the same estimate, naming the device
    assert result["estimate"] == {"target": "stm32h743", **row["estimate"]}
    assert main(["bench", str(model), "--target", "toaster"]) == 2


def test_an_rwkv_file_gets_a_decode_estimate(calibrated, tmp_path, capsys):
    from edgewise.rwkv.synthetic import random_checkpoint

    path = random_checkpoint(tmp_path / "tiny.pth", layers=2, width=128, vocab=300)
    speeds = {}
    for target in ("raspberry-pi-5", "stm32h743"):
        assert main(["targets", "estimate", str(path), "--target", target, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["estimated"] and result["kind"] == "rwkv" and result["weight_bytes_per_token"] > 0
        assert result["energy_mj_per_token"] == pytest.approx(result["power_w"] * result["ms_per_token"])
        speeds[target] = result["tokens_per_s"]
        e = result["estimate"]
        assert set(e) == ESTIMATE_KEYS and 0 < e["low_ms"] <= e["high_ms"]
        assert e["low_ms"] / e["latency_ms"] == pytest.approx(result["band"]["ratio_p05"])
    assert speeds["raspberry-pi-5"] > 10 * speeds["stm32h743"]   # 17 GB/s and 154 GFLOP/s against 1.9 and 1
    band = json.loads(calibrated[1].read_text())["rwkv_band"]   # measured once, kept with the calibration
    assert band["models"] == 9 and band["ratio_p05"] <= band["ratio_p95"] and band == result["band"]


def test_a_corrupt_model_is_one_line(calibrated, tmp_path):
    # a subprocess: ONNX Runtime's own log lines go to the process's stderr, past capsys
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    env = {**os.environ, "EDGEWISE_CACHE_DIR": str(calibrated[1].parents[1])}
    done = subprocess.run([sys.executable, "-m", "edgewise.cli", "targets", "estimate", str(bad), "--target", "host"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "ONNX Runtime cannot load it" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
