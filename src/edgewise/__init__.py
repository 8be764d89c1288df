"""edgewise: make trained models fit the edge, and prove what it cost.

Example:
    >>> import edgewise
    >>> task = edgewise.load_example("digits")
    >>> path, error = edgewise.export_task(task, "digits.onnx")
    >>> [result] = edgewise.bench([edgewise.BenchTarget("digits", path, task)])
"""

from edgewise.errors import EdgewiseError
from edgewise.examples import load_example
from edgewise.measure.bench import BenchResult, BenchSettings, BenchTarget, bench
from edgewise.measure.energy import Prices
from edgewise.runtime.onnx import export_task
from edgewise.task import Task, load_task_file

__all__ = [
    "BenchResult", "BenchSettings", "BenchTarget", "EdgewiseError", "Prices", "Task",
    "bench", "export_task", "load_example", "load_task_file",
]
__version__ = "0.1.0"
