"""One rich progress bar for every long loop (encoding, training): a label, done/total, an info text, time left."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool, total: int | None = None, done: int = 0) -> Iterator[Callable[..., None]]:
    """Yields `update(completed, info, total=None)`; a no-op when not `enabled` (other ranks, tests, pipes)."""
    if not enabled:
        yield lambda *a, **k: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, TimeRemainingColumn()) as bar:
        task = bar.add_task(label, total=total, completed=done, info="")

        def update(completed: int, info: str, total: int | None = None) -> None:
            bar.update(task, completed=completed, info=info, **({"total": total} if total is not None else {}))

        yield update
