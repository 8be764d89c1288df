import json

import pytest

from edgewise.compression.sensitivity import score_onnx
from edgewise.data import iter_batches
from edgewise.errors import EdgewiseError
from edgewise.measure.bench import BenchResult
from edgewise.measure.latency import Percentiles
from edgewise.measure.quality import MetricValue
from edgewise.optimization.report import write_outputs
from edgewise.optimization.run import choose, optimize, pareto
from edgewise.optimization.search import Constraints, SearchSettings, TrialRecord
from edgewise.optimization.space import space_for


def figures(metric, p50, size):
    return BenchResult(model="m", batch=1, latency_ms=Percentiles(p50, p50, p50), throughput_per_s=1000 / p50,
                       peak_rss_mb=None, runtime_rss_mb=None, size_bytes=size, params=size // 4,
                       metric=MetricValue("accuracy", metric), energy_j=p50 / 1000, energy_method="estimate",
                       cost_usd_per_million=1.0, cost_method="cpu-time", co2e_g_per_million=1.0,
                       cpu_ms_per_inference=p50)


def record(number, metric, p50, size, drop, violations):
    return TrialRecord(number, {}, f"r{number}", figures(metric, p50, size), drop, violations)


def test_a_trial_record_round_trips_through_json():
    trial = record(3, 0.97, 0.5, 64, 0.2, {"max_drop": -0.8})
    assert TrialRecord.from_json(json.loads(json.dumps(trial.to_json()))) == trial


def test_choose_best_feasible_on_the_objective():
    trials = [record(0, 0.99, 1.0, 100, 0.0, {"max_drop": -1.0}),
              record(1, 0.985, 0.4, 50, 0.5, {"max_drop": -0.5}),
              record(2, 0.90, 0.1, 10, 9.0, {"max_drop": 8.0})]
    chosen, met, message = choose(trials, "latency", Constraints(max_drop=1.0))
    assert chosen.number == 1 and met and message == ""
    assert [t.number for t in pareto(trials, "latency")] == [2, 1, 0]


def test_choose_returns_closest_and_names_the_failed_constraint():
    trials = [record(0, 0.99, 1.0, 100, 0.0, {"max_drop": -1.0, "max_size_mb": 2.0}),
              record(1, 0.95, 0.5, 50, 4.0, {"max_drop": 3.0, "max_size_mb": 0.5})]
    chosen, met, message = choose(trials, "latency", Constraints(max_drop=1.0, max_size_mb=1.0))
    assert not met and chosen.number == 0  # total excess 2.0 MB against 3 points + 0.5 MB
    assert "--max-size-mb failed for every candidate" in message and "r0 (size 3 MB > --max-size-mb 1)" in message


def test_constraints_that_contradict_or_make_no_sense_are_refused():
    with pytest.raises(EdgewiseError, match="--max-drop must be >= 0"):
        Constraints(max_drop=-1)
    with pytest.raises(EdgewiseError, match="allows losing the whole metric"):
        Constraints(max_drop=150, relative=True)
    with pytest.raises(EdgewiseError, match="--max-size-mb must be > 0"):
        Constraints(max_size_mb=0)
    with pytest.raises(EdgewiseError, match="--objective 'speed'"):
        SearchSettings(objective="speed")


def test_space_only_offers_what_applies(tmp_path, image_task, encoder_task):
    from edgewise.runtime import onnx as onnx_runtime
    image_space = space_for(image_task, onnx_runtime.export_task(image_task, tmp_path / "a.onnx")[0])
    assert image_space.depth == (1.0, 0.67, 0.5)  # its residual blocks can be dropped
    assert 0.5 in image_space.prune and "int8" in image_space.quant
    assert "int4" not in image_space.quant  # a CNN has no MatMul weights for MatMulNBits
    encoder_space = space_for(encoder_task, onnx_runtime.export_task(encoder_task, tmp_path / "b.onnx")[0])
    assert encoder_space.depth == (1.0, 0.67, 0.5) and "int4" in encoder_space.quant


@pytest.fixture
def fast_settings():
    return SearchSettings(trials=6, time_budget_min=2, trial_seconds=0.1, distill_epochs=2)


def test_optimize_writes_valid_artifacts(tmp_path, image_task, fast_settings):
    result = optimize(image_task, Constraints(max_drop=5.0), fast_settings, final_seconds=0.3,
                      workdir=tmp_path / "work")
    assert 1 <= len(result.trials) <= 6 and result.met
    names = [c.name for c in result.finalists]
    assert names[:2] == ["baseline", "ort-quantize_dynamic-default"] and result.chosen.recipe in names
    out = write_outputs(result, tmp_path / "out")
    card = json.loads((out / "card.json").read_text())
    assert card["recipe"] == result.chosen.recipe and card["constraints"]["max_drop"] == 5.0
    assert card["chosen"]["size_bytes"] == (out / "model.onnx").stat().st_size
    assert card["held_out"]["metric"] == card["chosen"]["metric"]["value"] and card["warning"] == ""
    assert len(json.loads((out / "candidates.json").read_text())) == len(result.trials)
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 2 and "ort-quantize_dynamic-default" in page and "<script" not in page
    assert "Per-layer sensitivity" in page and "energy" in (out / "report.md").read_text().lower()


class _Guarded:
    """A split that records whether it was read before `allowed` was set."""

    def __init__(self, split):
        self.split, self.allowed, self.read_early = split, False, False

    def __iter__(self):
        self.read_early |= not self.allowed
        return iter_batches(self.split, 64)


def test_no_trial_touches_the_held_out_split(tmp_path, image_task, fast_settings, monkeypatch):
    from edgewise.optimization import run
    x, y = image_task.eval
    held_out = _Guarded((x, y))
    task = image_task.with_eval(held_out)
    task.validation = (x[::-1].copy(), y[::-1].copy())
    measure = run.measure_candidates

    def finalists_only(*args, **kwargs):
        held_out.allowed = True
        return measure(*args, **kwargs)
    monkeypatch.setattr(run, "measure_candidates", finalists_only)
    result = optimize(task, Constraints(max_drop=5.0), fast_settings, final_seconds=0.2, workdir=tmp_path / "work")
    assert held_out.allowed and not held_out.read_early
    chosen = result.chosen_candidate
    assert chosen.validation_metric == pytest.approx(result.chosen.metric)   # what the search saw ...
    assert chosen.figures.metric.value == pytest.approx(score_onnx(image_task, chosen.onnx()))  # ... what is stated


def test_validation_and_held_out_disagreeing_is_a_warning(tmp_path, image_task, fast_settings):
    result = optimize(image_task, Constraints(max_drop=5.0), fast_settings, final_seconds=0.2, workdir=tmp_path / "work")
    assert result.disagreement == ""
    result.chosen.drop = result.held_out_drop + 5.5   # as if validation had flattered the chosen model
    assert "validation and held-out disagree" in result.disagreement
    out = write_outputs(result, tmp_path / "out")
    card = json.loads((out / "card.json").read_text())
    assert card["warning"] == result.disagreement and card["held_out"]["drop"] == result.held_out_drop
    assert card["validation"]["drop"] == result.chosen.drop
    page = (out / "report.html").read_text()
    assert "Warning:" in page and "metric, validation" in page and "metric, held-out" in page


def test_study_resumes_where_it_stopped(tmp_path, image_task, fast_settings):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = optimize(image_task, Constraints(), SearchSettings(**{**fast_settings.__dict__, "trials": 2, "study": storage}),
                     final_seconds=0.2, workdir=tmp_path / "first")
    assert len(first.trials) == 2
    second = optimize(image_task, Constraints(), SearchSettings(**{**fast_settings.__dict__, "trials": 4, "study": storage}),
                      final_seconds=0.2, workdir=tmp_path / "second")
    assert len(second.trials) == 4
    assert {t.number for t in first.trials} < {t.number for t in second.trials}  # earlier trials kept, not redone


def _optimize_process(out, storage, trials):
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-m", "edgewise.cli", "optimize", "--example", "breast-cancer",
                             "--trials", str(trials), "--study", storage, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_trials(storage, count, process, timeout_s=240):
    import time

    import optuna
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            study = optuna.load_study(study_name="edgewise-breast-cancer-latency", storage=storage)
            if sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) >= count:
                return
        except KeyError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} trials in {timeout_s} s")


def test_killed_run_resumes_from_its_study(tmp_path):
    import signal

    import optuna
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    process = _optimize_process(tmp_path / "out", storage, trials=24)
    _wait_for_trials(storage, 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "out" / "card.json").exists()
    before = {t.number for t in optuna.load_study(study_name="edgewise-breast-cancer-latency", storage=storage).trials
              if t.state == optuna.trial.TrialState.COMPLETE}
    resumed = _optimize_process(tmp_path / "out", storage, trials=len(before) + 2)
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    numbers = {t["number"] for t in json.loads((tmp_path / "out" / "candidates.json").read_text())}
    assert before < numbers and card["trials"] == len(before) + 2


def test_interrupted_run_writes_best_so_far_and_a_valid_report(tmp_path):
    import signal
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    process = _optimize_process(tmp_path / "out", storage, trials=24)
    _wait_for_trials(storage, 1, process)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, process.communicate()
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["interrupted"] and card["trials"] >= 1
    assert (tmp_path / "out" / "report.html").read_text().count("<svg") == 2
    assert not list((tmp_path / "out").glob("*.part"))


def test_optimizing_for_a_microcontroller_drops_what_does_not_fit_before_measuring_it(tmp_path, monkeypatch):
    import numpy as np
    import torch
    from torch import nn

    from edgewise.optimization import search
    from edgewise.task import Task
    from edgewise.optimization.report import render_markdown
    from edgewise.targets.calibrate import calibrate

    calibrate(families=("mlp", "cnn"))   # the estimates' calibration, narrowed (into this session's cache)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 3)).eval()   # 4 MB fp32, 1 MB int8
    x = np.random.default_rng(0).standard_normal((200, 1024)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    task = Task(model, train=(x[:120], y[:120]), calibration=(x[:64],), eval=(x[120:], y[120:]), name="wide")
    measured = []
    real = search.bench
    monkeypatch.setattr(search, "bench", lambda targets, s: measured.append(targets[0].name) or real(targets, s))
    settings = SearchSettings(trials=4, time_budget_min=2, trial_seconds=0.1, distill_epochs=1, exports=("executorch",))
    result = optimize(task, Constraints(max_drop=50.0, target="stm32h743"), settings, final_seconds=0.2,
                      workdir=tmp_path / "work")
    assert "baseline" not in measured   # the fit check dropped it before its accuracy run
    assert any(r == "baseline" and why.startswith("does not fit stm32h743: flash") for r, why in result.rejected)
    assert result.on_target["baseline"]["fits"] is False
    chosen = result.on_target[result.chosen.recipe]
    assert chosen["estimated"] and 0 < chosen["flash_bytes"] <= 2 * 2**20 and chosen["latency_ms"] > 0
    assert result.chosen.objective("latency") == chosen["latency_ms"]   # the objective is the estimate there
    from edgewise.targets.export import ship

    model, steps = result.torch_form   # the chosen model before its ONNX quantization, and its recipe
    assert "+".join(s.label() for s in steps) == result.chosen.recipe or result.chosen.recipe == "baseline"
    result.exports = ship(task, model, steps, ["executorch"], tmp_path)
    report = render_markdown(result)
    assert "On stm32h743: estimates, not measurements" in report and "every candidate must fit stm32h743" in report
    assert result.without_target and "On this machine's own measurements instead of the estimates on stm32h743" in report
    assert "The chosen model for other runtimes" in report and "| executorch | model.pte |" in report
    assert (tmp_path / "model.pte").is_file() and result.exports[0].passed


def test_target_constraints_are_checked_up_front():
    with pytest.raises(EdgewiseError, match="unknown target 'toaster'"):
        Constraints(target="toaster")
    with pytest.raises(EdgewiseError, match="--max-ram-mb is RAM on a device: give --target"):
        Constraints(max_ram_mb=64)


def test_a_latency_budget_on_the_pi_changes_the_choice_on_digits(tmp_path):
    """The same digits search judged on raspberry-pi-5 estimates. A first search, under a budget that
    binds nowhere, gives the model this machine's measurements pick and its estimate on the Pi; a
    budget just under that estimate (deterministic: the same calibration and graph) and still well
    above its time here then binds on the Pi alone, so the smallest model differs."""
    import math

    from edgewise.examples import load_example
    from edgewise.optimization.report import render_markdown

    settings = SearchSettings(objective="size", trials=8, time_budget_min=3, trial_seconds=0.1)
    task = load_example("digits")
    loose = optimize(task, Constraints(target="raspberry-pi-5", max_latency_ms=1e3), settings, final_seconds=0.2,
                     workdir=tmp_path / "loose")
    pick = next(t for t in loose.trials if t.recipe == loose.without_target)
    here, there = pick.figures.latency_ms.p50, loose.on_target[pick.recipe]["latency_ms"]
    budget = math.floor(90 * there) / 100   # 0.9 x, down to 0.01 ms
    assert budget > 1.25 * here, f"{pick.recipe}: {here:.3g} ms here, {there:.3g} ms estimated on the Pi"

    result = optimize(task, Constraints(target="raspberry-pi-5", max_latency_ms=budget), settings,
                      final_seconds=0.2, workdir=tmp_path / "work")
    assert result.chosen.recipe != result.without_target   # this machine's measurements pick another model
    assert result.on_target[result.chosen.recipe]["latency_ms"] <= budget
    host_pick = next(t for t in result.trials if t.recipe == result.without_target)
    assert host_pick.figures.latency_ms.p50 <= budget < result.on_target[host_pick.recipe]["latency_ms"]
    report = render_markdown(result)
    assert "the device's budget is what changed the choice" in report
    assert (f"| estimated latency on raspberry-pi-5 {result.on_target[host_pick.recipe]['latency_ms']:.3g} ms "
            f"> --max-latency-ms {budget:g} |") in report