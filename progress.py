"""Progress bars (rich) for long loops: calibration, evaluation, tuning. Shown on stderr when it is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress"]


@contextmanager
def progress(description: str, total: int | None = None, *, enabled: bool | None = None,
             unit: str = "samples") -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`, which moves a bar titled `description` by `n` (of `total`, None: unknown) `unit`.

    `enabled`: None shows the bar only when stderr is a terminal (never in pipes, logs or tests).
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
