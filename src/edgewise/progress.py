"""Progress bars for long work, on stderr so stdout stays clean for --json."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_STDERR = Console(stderr=True)  # also for warnings that must not mix into --json output


def progress_bar(disable: bool = False) -> Progress:
    """A transient bar: description, bar, done/total, a status field, time left. Off when stderr is
    not a terminal: rich cannot redraw there, and a bar it cannot erase leaves a blank line in logs."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                    console=_STDERR, transient=True, disable=disable or not _STDERR.is_terminal)


def status(text: str):
    """A transient spinner for one long step whose length is unknown (an export, a lowering)."""
    return _STDERR.status(text)
