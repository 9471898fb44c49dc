"""The rows of `higgs-train checkpoints DIR`: every checkpoint folder, valid or not and why, and resume's pick."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.io import read_pointer
from higgs_train.checkpoint.resume import list_checkpoints
from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.errors import OutputDirError


@dataclass
class CheckpointRow:
    name: str
    step: int | None
    kind: str | None
    size_bytes: int
    modified: str
    valid: bool
    reason: str
    resume_pick: bool = False
    score: object | None = None  # the checkpoint's ScoreRow from scores.jsonl, when it was scored
    best: bool = False


def checkpoint_rows(run_dir: str | Path, scores: dict | None = None) -> list[CheckpointRow]:
    """Newest first; tmp folders of interrupted saves are listed as invalid; the first valid row is resume's pick.

    `scores` maps a step to its score (from scores.jsonl, read by the caller), shown beside the checkpoint.
    """
    scores, run_dir = scores or {}, Path(run_dir)
    if not run_dir.is_dir():
        raise OutputDirError(f"{run_dir}: no such run folder; pass a run's --output_dir")
    paths = list_checkpoints(run_dir) + sorted(p for p in run_dir.iterdir() if p.is_dir() and layout.is_tmp(p.name))
    rows = []
    for path in paths:
        try:
            result = verify_checkpoint(path)
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%m-%d %H:%M")
        except FileNotFoundError:
            continue  # removed while listed: rotation by a running training, not an error
        reason = "ok" if result.ok else "; ".join(result.problems)
        if layout.is_tmp(path.name):
            reason = "unfinished save (removed at the next start)"
        rows.append(CheckpointRow(path.name, result.step, result.kind, size, mtime, result.ok, reason))
    for row in rows:
        if row.valid:
            row.resume_pick = True
            break
    best = read_pointer(run_dir, layout.BEST)
    for row in rows:
        row.score = scores.get(row.step)
        row.best = row.name == best
    return rows


def checkpoints_listing(run_dir: str | Path, scores: dict) -> list:
    """What `higgs-train checkpoints` prints: the table (when there are checkpoints) and the notes under it."""
    rows = checkpoint_rows(run_dir, scores)
    notes = checkpoint_notes(rows) if rows else [f"{run_dir}: no checkpoints"]
    return ([checkpoint_table(rows)] if rows else []) + (["\n".join(notes)] if notes else [])


def checkpoint_notes(rows: list[CheckpointRow]) -> list[str]:
    """The lines under the table: which checkpoint is best, and why each invalid one is invalid."""
    notes = [f"best (*): {r.name}" for r in rows if r.best]
    return notes + [f"{r.name}: {r.reason}" for r in rows if not r.valid]


def checkpoint_table(rows: list[CheckpointRow]):
    """The rich table `higgs-train checkpoints` prints (readable at 80 columns)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for name in ("checkpoint", "step", "size", "modified", "status", "error", "sim", "resume"):
        table.add_column(name, no_wrap=True)
    for r in rows:
        status = ("[green]valid[/]" if r.valid else "[red]invalid[/]") + (" (fallback)" if r.kind == "fallback" else "")
        wer, sim = ("-", "-")
        if r.score and r.score.headline is not None:
            wer, sim = f"{r.score.headline_name} {r.score.headline:.2f}", f"{r.score.similarity:.2f}"
        name, size = r.name + (" *" if r.best else ""), f"{r.size_bytes / 1e6:.1f}M"
        table.add_row(name, str(r.step or "-"), size, r.modified, status, wer, sim, "<-" if r.resume_pick else "")
    return table
