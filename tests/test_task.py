import numpy as np
import pytest

from edgewise.errors import EdgewiseError
from edgewise.runtime import torch as torch_runtime
from edgewise.task import Task, load_task_file
from tests.conftest import tiny_classifier


def test_evaluate_accuracy_matches_hand_count(tiny_task):
    outputs = torch_runtime.predict(tiny_task.model, tiny_task.eval[0])
    expected = np.mean(outputs.argmax(1) == tiny_task.eval[1])
    assert tiny_task.evaluate(lambda x: torch_runtime.predict(tiny_task.model, x)) == pytest.approx(expected)


def test_cosine_fidelity_is_one_for_the_model_itself_and_lower_for_noise(tiny_task):
    task = Task(tiny_task.model, eval=(tiny_task.eval[0],), metric="cosine")
    same = task.evaluate(lambda x: torch_runtime.predict(task.model, x))
    rng = np.random.default_rng(1)
    noisy = task.evaluate(lambda x: torch_runtime.predict(task.model, x) + rng.normal(0, 1, (len(x), 3)))
    assert same == pytest.approx(1.0, abs=1e-6) and noisy < 0.9


def test_label_metric_without_labels_says_so(tiny_task):
    task = Task(tiny_task.model, eval=(tiny_task.eval[0],), metric="accuracy")
    with pytest.raises(EdgewiseError, match="needs labels"):
        task.evaluate(lambda x: torch_runtime.predict(task.model, x))


def test_metric_that_errors_is_reported(tiny_task):
    def broken(outputs, labels):
        raise ValueError("boom")
    task = Task(tiny_task.model, eval=tiny_task.eval, metric=broken)
    with pytest.raises(EdgewiseError, match="metric 'broken' failed: ValueError: boom"):
        task.evaluate(lambda x: torch_runtime.predict(task.model, x))


def test_bad_model_and_metric_are_refused(tmp_path):
    with pytest.raises(EdgewiseError, match="no such file"):
        Task(tmp_path / "missing.onnx")
    with pytest.raises(EdgewiseError, match="torch.nn.Module or an ONNX path"):
        Task(42)
    with pytest.raises(EdgewiseError, match="unknown metric 'auc'"):
        Task(tiny_classifier(), metric="auc")


def test_load_task_file_runs_a_users_factory(tmp_path):
    source = tmp_path / "my_task.py"
    source.write_text(
        "import numpy as np, torch\nfrom edgewise import Task\n"
        "def make():\n"
        "    x = np.zeros((4, 2), np.float32)\n"
        "    return Task(torch.nn.Linear(2, 2), eval=(x, np.zeros(4, np.int64)), name='mine')\n")
    assert load_task_file(f"{source}:make").name == "mine"


@pytest.mark.parametrize("spec, message", [
    ("no_colon.py", "expected path/to/file.py:name"),
    ("missing.py:task", "is not a Python file"),
    ("{dir}/ok.py:absent", "defines no 'absent'"),
    ("{dir}/ok.py:number", "is a int, expected an edgewise.Task"),
    ("{dir}/raises.py:task", "failed to import: ZeroDivisionError"),
    ("{dir}/lines.py:task", "failed to import: ValueError: bad news$"),   # a message of two lines: one
    ("{dir}/ok.py:broken", r"broken\(\) failed: KeyError"),                     # a factory that raises
    ("{dir}/ok.py:needs_data", r"needs_data\(\) failed: TypeError.*no arguments"),  # or needs arguments
])
def test_malformed_task_specs_are_named(tmp_path, spec, message):
    (tmp_path / "ok.py").write_text("number = 3\n\ndef broken():\n    return {}['x']\n\n"
                                    "def needs_data(path):\n    return path\n")
    (tmp_path / "raises.py").write_text("1 / 0\n")
    (tmp_path / "lines.py").write_text("raise ValueError('bad\\nnews')\n")
    with pytest.raises(EdgewiseError, match=message):
        load_task_file(spec.format(dir=tmp_path))


def test_holdout_chooses_on_validation_and_states_on_eval(tiny_task):
    x, y = tiny_task.train
    task = Task(tiny_task.model, train=(x, y), validation=(x[40:], y[40:]), eval=(x[:40], y[:40]))
    choosing, stating = task.holdout()
    assert choosing.eval[0] is task.validation[0] and stating is task
    assert choosing.validation is None and choosing.train is task.train


def test_without_validation_eval_is_shared_out_alike(tiny_task):
    choosing, stating = tiny_task.holdout()
    x = tiny_task.eval[0]
    assert np.array_equal(choosing.eval[0], x[0::2]) and np.array_equal(stating.eval[0], x[1::2])
    assert choosing.reference_outputs().shape == (20, 3) and stating.reference_outputs().shape == (20, 3)
