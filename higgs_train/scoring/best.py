"""Which checkpoint is best, from a table of scores."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class ScoreRow:
    step: int
    wer: float | None = None
    cer: float | None = None
    similarity: float | None = None
    duration_ratio: float | None = None
    trailing_share: float | None = None
    eval_loss: float | None = None
    checkpoint: str | None = None
    metric: str | None = None  # the headline error's metric: wer, cer (scripts without spaces), or cer+wer (mixed)
    error: float | None = None  # per row its language's headline rate, averaged (rows scored before: None)

    @property
    def headline(self) -> float | None:
        """The error rate that judges the checkpoint: `error`, or WER for rows scored before it existed."""
        return self.error if self.error is not None else self.wer

    @property
    def headline_name(self) -> str:
        return (self.metric or "wer").upper()

    def to_dict(self) -> dict:
        return asdict(self)


def badness(row: ScoreRow, by: str) -> float:
    """Lower is better. `error` is the headline error rate (WER, or CER for scripts written without spaces, mixed per
    row for mixed data). `combined` = error + (1 - similarity) + |log duration ratio| + trailing share: each term is 0
    for a perfect clip and about 1 for a clearly broken one (all words wrong, another voice, twice or half the
    expected length, a clip that is all trailing noise)."""
    if by in ("wer", "cer"):
        value = getattr(row, by)
    elif by == "error":
        value = row.headline
    elif by == "similarity":
        value = None if row.similarity is None else -row.similarity
    elif by == "loss":
        value = row.eval_loss
    else:
        parts = (row.headline, row.similarity, row.duration_ratio, row.trailing_share)
        if any(p is None for p in parts):
            return math.inf
        value = row.headline + (1 - row.similarity) + abs(math.log(max(row.duration_ratio, 1e-6))) + row.trailing_share
    return math.inf if value is None else value


def best_row(rows: list[ScoreRow], by: str) -> ScoreRow | None:
    """The best row (ties: the earlier step), or None when no row has the numbers `by` needs."""
    scored = [r for r in rows if math.isfinite(badness(r, by))]
    return min(scored, key=lambda r: (badness(r, by), r.step)) if scored else None
