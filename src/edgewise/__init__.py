"""edgewise: make trained models fit the edge, and prove what it cost.

Example:
    >>> import edgewise
    >>> task = edgewise.load_example("digits")
    >>> result = edgewise.compress(task, [edgewise.Prune(0.5), edgewise.Int8()])
    >>> found = edgewise.optimize(task, edgewise.Constraints(max_drop=1.0))
"""

from edgewise.compress.recipe import CompressResult, compress
from edgewise.compress.sensitivity import Tolerance
from edgewise.compress.steps import Distill, Int4, Int8, Int8Dynamic, Int8Weight, Prune
from edgewise.errors import EdgewiseError
from edgewise.examples import load_example
from edgewise.measure.bench import BenchResult, BenchSettings, BenchTarget, bench
from edgewise.measure.energy import Prices
from edgewise.optimize.run import OptimizeResult, optimize
from edgewise.optimize.search import Constraints, SearchSettings
from edgewise.runtime.onnx import export_task
from edgewise.task import Task, load_task_file

__all__ = [
    "BenchResult", "BenchSettings", "BenchTarget", "CompressResult", "Constraints", "Distill", "EdgewiseError",
    "Int4", "Int8", "Int8Dynamic", "Int8Weight", "OptimizeResult", "Prices", "Prune", "SearchSettings", "Task",
    "Tolerance", "bench", "compress", "export_task", "load_example", "load_task_file", "optimize",
]
__version__ = "0.1.0"
