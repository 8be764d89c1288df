import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgewise.cli import main
from edgewise.measure.energy import rapl_meter
from edgewise.runtime import onnx as onnx_runtime
from tests.conftest import tiny_classifier

JSON_KEYS = {"latency_ms", "throughput_per_s", "peak_rss_mb", "size_bytes", "params", "metric", "energy_j",
             "energy_method", "cost_usd_per_million", "co2e_g_per_million"}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_example_json_has_every_key_with_sane_values(capsys):
    code, out, _ = run(capsys, "bench", "--example", "digits", "--json", "--seconds", "0.5")
    assert code == 0
    report = json.loads(out)
    [result] = report["results"]
    assert JSON_KEYS <= set(result)
    assert result["metric"]["name"] == "accuracy" and result["metric"]["value"] > 0.95
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert result["energy_method"] == ("rapl" if rapl_meter() else "estimate") and result["energy_j"] > 0
    assert result["params"] > 100_000 and result["size_bytes"] > 4 * 100_000
    assert result["export_max_abs_error"] < 1e-4
    assert report["machine"]["versions"]["onnxruntime"]


def test_two_models_print_a_ratio_table(tmp_path, capsys):
    x = np.zeros((1, 6), np.float32)
    a = onnx_runtime.export(tiny_classifier(), x, tmp_path / "a.onnx")
    b = onnx_runtime.export(torch.nn.Sequential(torch.nn.Linear(6, 256), torch.nn.Linear(256, 3)).eval(), x,
                            tmp_path / "b.onnx")
    code, out, _ = run(capsys, "bench", str(a), str(b), "--seconds", "0.3", "--batch", "1,8")
    assert code == 0
    assert "ratios against a.onnx" in out and "speedup p50" in out
    assert out.count("b.onnx") >= 4  # two batch sizes, in the figures and in the ratios
    assert ("energy read from RAPL" if rapl_meter() else "energy is an estimate") in out


def test_weights_file_is_benched_with_the_examples_architecture(tmp_path, capsys):
    from edgewise.examples import load_example
    weights = load_example("breast-cancer").model.state_dict()
    f1 = {}
    for name, bias in (("mine", None), ("always-benign", torch.tensor([0.0, 1e4]))):
        state = weights if bias is None else {**weights, "5.bias": bias}
        torch.save(state, tmp_path / f"{name}.pt")
        code, out, _ = run(capsys, "bench", str(tmp_path / f"{name}.pt"), "--example", "breast-cancer",
                           "--json", "--seconds", "0.2")
        metric = json.loads(out)["results"][0]["metric"]
        assert code == 0 and metric["name"] == "f1"
        f1[name] = metric["value"]
    # the file's weights are the ones measured: a head that always says "benign" (class 1) scores
    # the f1 of predicting every sample positive, not the trained model's
    assert f1["mine"] > 0.9 and f1["always-benign"] < 0.85


@pytest.fixture
def bad_files(tmp_path):
    good = onnx_runtime.export(tiny_classifier(), np.zeros((1, 6), np.float32), tmp_path / "good.onnx")
    (tmp_path / "truncated.onnx").write_bytes(good.read_bytes()[:200])
    torch.save(tiny_classifier(), tmp_path / "pickled_model.pt")
    (tmp_path / "task.py").write_text("x = 1\n")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["bench", "{d}/absent.onnx"], "absent.onnx: no such file"),
    (["bench", "{d}/truncated.onnx"], "truncated.onnx: not a valid ONNX model"),
    (["bench", "--example", "mnist"], "unknown example 'mnist'"),
    (["bench", "nonsense"], "nonsense: not an .onnx file"),
    (["bench", "--task", "{d}/task.py"], "expected path/to/file.py:name"),
    (["bench", "--task", "{d}/task.py:missing"], "defines no 'missing'"),
    (["bench", "{d}/pickled_model.pt", "--example", "digits"], "refused to unpickle"),
    (["bench", "{d}/pickled_model.pt"], "weights need an architecture"),
    (["bench", "--example", "digits", "--batch", "1,x"], "--batch '1,x'"),
    (["bench", "--example", "digits", "--threads", "0"], "Invalid value for '--threads'"),
    (["bench", "--example", "digits", "--device", "toaster"], "unknown device profile 'toaster'"),
    (["bench", "--bogus"], "No such option: --bogus"),
    (["bench", "--example", "digits", "--task", "x.py:t"], "give one of --example, --task or --onnx"),
])
def test_bad_input_is_one_line_and_exit_2(bad_files, capsys, argv, message):
    code, out, err = run(capsys, *[a.format(d=bad_files) for a in argv])
    assert code == 2
    assert message in err and err.startswith("edgewise: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_installed_command_exits_2_without_traceback(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    done = subprocess.run([sys.executable, "-m", "edgewise.cli", "bench", str(tmp_path / "bad.onnx")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not a valid ONNX model" in done.stderr


def test_compress_example_writes_model_and_card(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "compress", "--example", "breast-cancer", "--recipe", "prune(0.5)+int8",
                          "--out", str(out), "--json", "--seconds", "0.3")
    assert code == 0
    report = json.loads(stdout)
    assert set(report) == {"baseline", "steps", "final"} and len(report["steps"]) == 2
    assert JSON_KEYS <= set(report["final"])
    assert report["final"]["params"] < report["baseline"]["params"]
    assert (out / "model.onnx").is_file() and json.loads((out / "card.json").read_text())["recipe"].endswith("+int8")


@pytest.mark.parametrize("argv, message", [
    (["compress", "--example", "digits", "--recipe", "shrink"], "unknown recipe step 'shrink'"),
    (["compress", "--recipe", "int8"], "name the model to compress"),
    (["compress", "--example", "digits", "--recipe", "int8", "--out", "/proc/edgewise"], "not writable"),
    (["compress", "--example", "digits", "--recipe", "int8", "--export", "executorch"], "give --out FOLDER too"),
    (["compress", "--example", "digits", "--recipe", "int8", "--export", "tflite", "--out", "x"],
     "--export tflite: unknown format; choose one of executorch"),
])
def test_compress_bad_input_is_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def _foreign_onnx(tmp_path):
    """An ONNX model exported by torch.onnx.export (dynamo), not by edgewise, and its data."""
    import numpy as np
    from edgewise.examples.breast_cancer import splits
    from edgewise.examples import load_example
    model = load_example("breast-cancer").model
    path = tmp_path / "foreign.onnx"
    torch.onnx.export(model, (torch.zeros(1, 30),), str(path), input_names=["features"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)
    (x_train, y_train), _, (x_test, y_test) = splits()
    x, y = np.concatenate([x_train[:100], x_test]), np.concatenate([y_train[:100], y_test])
    np.savez(tmp_path / "labelled.npz", features=x, y=y)
    np.savez(tmp_path / "inputs.npz", features=x)
    return path


@pytest.mark.parametrize("data, metric", [("labelled.npz", "accuracy"), ("inputs.npz", "cosine")])
def test_optimize_onnx_only_with_and_without_labels(tmp_path, capsys, data, metric):
    model = _foreign_onnx(tmp_path)
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "optimize", "--onnx", str(model), "--data", str(tmp_path / data),
                          "--trials", "3", "--out", str(out))
    assert code == 0, stdout
    card = json.loads((out / "card.json").read_text())
    assert card["metric"] == metric and card["constraints_met"]
    assert card["chosen"]["metric"]["name"] == metric and (out / "report.html").stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["optimize", "--max-drop", "-1"], "--max-drop must be >= 0"),
    (["optimize", "--max-drop", "120", "--relative"], "allows losing the whole metric"),
    (["optimize", "--objective", "speed"], "--objective 'speed'"),
    (["optimize", "--onnx", "m.onnx"], "go together"),
    (["optimize", "--out", "/proc/edgewise-out"], "not writable"),
    (["optimize", "--export", "coreml"], "--export coreml: unknown format"),
    (["optimize", "--study", "mysql+nodriver://x/y", "--example", "breast-cancer"], "--study mysql+nodriver://x/y: cannot open it"),
])
def test_optimize_bad_input_is_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
