"""Progress bars for long work, on stderr so stdout stays clean for --json."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_STDERR = Console(stderr=True)  # also for warnings that must not mix into --json output


def progress_bar(disable: bool = False) -> Progress:
    """A transient bar: description, bar, done/total, a status field, time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                    console=_STDERR, transient=True, disable=disable)
