"""edgewise: make trained models fit the edge, and prove what it cost.

Example:
    >>> import edgewise
    >>> task = edgewise.load_example("digits")
    >>> result = edgewise.compress(task, [edgewise.Prune(0.5), edgewise.Int8()])
    >>> result.final.name
    'prune(amount=0.5,kind=structured)+int8'
    >>> found = edgewise.optimize(task, edgewise.Constraints(max_drop=1.0), edgewise.SearchSettings(trials=3))
    >>> found.met and found.held_out_drop <= 1.0
    True

Names load on first use, so `from edgewise.rwkv import RWKV` does not import ONNX Runtime,
Optuna or scikit-learn (a device running only the RWKV runtime keeps that memory).
"""

from importlib import import_module

_EXPORTS = {
    "CompressResult": "edgewise.compression.recipe", "compress": "edgewise.compression.recipe",
    "Tolerance": "edgewise.compression.sensitivity",
    "Distill": "edgewise.compression.steps", "Int4": "edgewise.compression.steps", "Int8": "edgewise.compression.steps",
    "Int8Dynamic": "edgewise.compression.steps", "Int8Weight": "edgewise.compression.steps", "Prune": "edgewise.compression.steps",
    "EdgewiseError": "edgewise.errors", "load_example": "edgewise.examples",
    "BenchResult": "edgewise.measure.bench", "BenchSettings": "edgewise.measure.bench",
    "BenchTarget": "edgewise.measure.bench", "bench": "edgewise.measure.bench", "Prices": "edgewise.measure.energy",
    "OptimizeResult": "edgewise.optimization.run", "optimize": "edgewise.optimization.run",
    "Constraints": "edgewise.optimization.search", "SearchSettings": "edgewise.optimization.search",
    "export_task": "edgewise.runtime.onnx", "Task": "edgewise.task", "load_task_file": "edgewise.task",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgewise' has no attribute {name!r}")
