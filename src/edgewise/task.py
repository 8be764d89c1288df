"""Task: the model, its data splits, its metric. Everything in edgewise works on one."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgewise.data import Inputs, alternate, concat, first_inputs, iter_batches
from edgewise.errors import EdgewiseError
from edgewise.files import atomic_path
from edgewise.measure.quality import Metric, resolve_metric


@dataclass(eq=False)
class Task:
    """A model to compress, with the data and metric that judge it.

    Args:
        model: a `torch.nn.Module`, or the path of an ONNX file.
        train: split for fine-tuning and distillation: `(X, y)`, `(X,)` or an iterable of batches.
        calibration: split for quantization calibration (defaults to `train`).
        eval: split on which the metric is stated: held out from every decision (training,
            early stopping, the search), so its figure is honest.
        metric: "accuracy", "f1", "cosine" (fidelity to the original model's outputs, for
            models without labels), or a callable `fn(outputs, labels) -> float`; higher is better.
        example_input: inputs used for export and latency; defaults to one sample of `eval`.
        name: a short name for reports.
        transformer: ORT fusion hints for BERT-like models (see `runtime.onnx.export`).
        assets: files a server needs beside the model (a text encoder's tokenizer.json), copied
            into every folder `compress` and `optimize` write.
        validation: split on which compression and search make their choices (early stopping,
            the accuracy guard, the search's metric). Without it, every other sample of `eval`
            is used for choosing and the rest for the stated figure (see `holdout`).

    Example:
        >>> import numpy as np, torch
        >>> X = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
        >>> y = (X[:, 0] > 0).astype(np.int64)
        >>> model = torch.nn.Linear(4, 2)
        >>> task = Task(model, train=(X[:200], y[:200]), validation=(X[200:250], y[200:250]),
        ...             eval=(X[250:], y[250:]), metric="accuracy")
        >>> choosing, stating = task.holdout()   # decisions on validation, figures on eval
        >>> len(choosing.eval[0]), len(stating.eval[0])
        (50, 50)
    """

    model: torch.nn.Module | str | Path
    train: Any = None
    calibration: Any = None
    eval: Any = None
    metric: str | Callable | Metric = "accuracy"
    example_input: Inputs | None = None
    name: str = "task"
    transformer: dict | None = None
    validation: Any = None
    assets: tuple[Path, ...] = ()
    _reference: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.metric = resolve_metric(self.metric)
        if isinstance(self.model, (str, Path)):
            self.model = Path(self.model)
            if self.model.suffix != ".onnx":
                raise EdgewiseError(f"{self.model}: a Task model is a torch.nn.Module or an .onnx file")
            if not self.model.is_file():
                raise EdgewiseError(f"{self.model}: no such file; check the path")
        elif not isinstance(self.model, torch.nn.Module):
            raise EdgewiseError(f"Task.model must be a torch.nn.Module or an ONNX path, "
                                f"not {type(self.model).__name__}")
        if self.calibration is None:
            self.calibration = self.train

    def write_assets(self, out: str | Path) -> None:
        """Copy `assets` into `out`, each atomically."""
        for asset in self.assets:
            with atomic_path(Path(out) / Path(asset).name) as tmp:
                shutil.copyfile(asset, tmp)

    def holdout(self) -> tuple[Task, Task]:
        """(choosing, stating): the task whose eval is the validation split, for every decision,
        and the task whose eval no decision saw, for the figures a report states."""
        if self.validation is not None:
            return self.with_eval(self.validation), self
        return self.with_eval(alternate(self.eval, 0)), self.with_eval(alternate(self.eval, 1))

    def with_eval(self, split: Any) -> Task:
        """The same task judged on another split (the original model's outputs are recomputed)."""
        return dataclasses.replace(self, eval=split, validation=None, _reference={})

    @property
    def is_onnx(self) -> bool:
        return isinstance(self.model, Path)

    def sample_input(self, batch: int = 1) -> Inputs:
        """`batch` samples for export and latency: from example_input, else from eval."""
        if self.example_input is not None:
            return first_inputs((self.example_input,), batch, where="example_input")
        return first_inputs(self.eval, batch, where="eval")

    def evaluate(self, predict: Callable[[Inputs], np.ndarray], batch_size: int = 64,
                 limit: int | None = None) -> float:
        """The task metric of `predict` (inputs -> primary output) on the eval split
        (its first `limit` samples when given)."""
        outputs, targets = [], []
        for inputs, labels in iter_batches(self.eval, batch_size, limit=limit, where="eval"):
            outputs.append(np.asarray(predict(inputs)))
            if not self.metric.needs_reference:
                if labels is None:
                    raise EdgewiseError(f"metric {self.metric.name!r} needs labels: give eval=(X, y), "
                                        "or use metric='cosine' to measure fidelity without labels")
                targets.append(labels)
        outputs = concat(outputs)
        if self.metric.needs_reference:
            targets = self.reference_outputs(batch_size)[: len(outputs)]
        else:
            targets = concat(targets)
        try:
            return float(self.metric.fn(outputs, targets))
        except Exception as exc:
            raise EdgewiseError(f"metric {self.metric.name!r} failed: {type(exc).__name__}: {exc}") from None

    def reference_outputs(self, batch_size: int = 64) -> np.ndarray:
        """The original model's outputs on the eval split (cached): what fidelity is measured to."""
        if batch_size not in self._reference:
            if self.is_onnx:
                from edgewise.runtime import onnx as onnx_runtime
                sess = onnx_runtime.session(self.model)
                predict = lambda x: onnx_runtime.predict(sess, x)  # noqa: E731
            else:
                from edgewise.runtime import torch as torch_runtime
                predict = lambda x: torch_runtime.predict(self.model, x)  # noqa: E731
            self._reference[batch_size] = concat([predict(x) for x, _ in iter_batches(self.eval, batch_size)])
        return self._reference[batch_size]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def load_task_file(spec: str) -> Task:
    """Load a user's Task from `path/to/file.py:name` (a Task, or a function returning one)."""
    path_text, sep, attr = spec.rpartition(":")
    if not sep or not path_text or not attr:
        raise EdgewiseError(f"--task {spec!r}: expected path/to/file.py:name, e.g. my_task.py:task")
    path = Path(path_text)
    if path.suffix != ".py" or not path.is_file():
        raise EdgewiseError(f"--task {spec!r}: {path} is not a Python file; check the path")
    module_name = f"edgewise_user_task_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except EdgewiseError:
        raise
    except Exception as exc:
        raise EdgewiseError(f"--task {spec!r}: {path} failed to import: {type(exc).__name__}: {_one_line(exc)}") from None
    if not hasattr(module, attr):
        raise EdgewiseError(f"--task {spec!r}: {path} defines no {attr!r}")
    task = getattr(module, attr)
    if callable(task) and not isinstance(task, Task):
        try:
            task = task()
        except EdgewiseError:
            raise
        except Exception as exc:
            raise EdgewiseError(f"--task {spec!r}: {attr}() failed: {type(exc).__name__}: {_one_line(exc)}; "
                                "it must build the Task with no arguments") from None
    if not isinstance(task, Task):
        raise EdgewiseError(f"--task {spec!r}: {attr} is a {type(task).__name__}, expected an edgewise.Task")
    return task
