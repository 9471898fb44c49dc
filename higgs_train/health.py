"""Is training alive: a loss or gradient norm that is not finite stops the run at that step, before the optimizer
applies it and before anything of it is saved; a collapse (the gradient gone, or the loss frozen) is a warning.

A diverged run would otherwise go on until a save compared NaN with NaN and blamed the disk, and a dead one (an
update so large that every LoRA weight saturates) would publish checkpoints that verify and resume silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from higgs_train.errors import DivergedError

COLLAPSE_STEPS = 3  # steps in a row with a zero gradient norm, or a loss unchanged to FROZEN, before the warning
FROZEN = 1e-7


class NonFinite(Exception):
    """What stopped being finite (`what`) and its value, for the step's message."""

    def __init__(self, what: str, value: float):
        super().__init__(f"{what} {value}")
        self.what, self.value = what, value


def check_finite(loss: float, grad_norm: float | None, text_loss: float | None = None) -> None:
    """Raises NonFinite for a step whose loss, text loss or gradient norm is NaN or infinite."""
    for what, value in (("loss", loss), ("text loss", text_loss), ("gradient norm", grad_norm)):
        if value is not None and not math.isfinite(value):
            raise NonFinite(f"the {what} is", value)


def diverged(e: NonFinite, step: int, lr: float, last_good: str | None) -> DivergedError:
    """The one line for a step that diverged: the step, the value, the last good checkpoint, what to change."""
    where = (
        f"the last good checkpoint is {last_good}, where a rerun resumes"
        if last_good
        else "no checkpoint was saved before it, so a rerun starts again"
    )
    return DivergedError(
        f"step {step}: {e.what} {e.value}: training diverged, and nothing of this step was applied or saved; "
        f"{where}. Lower --lr (this step's rate was {lr:.3g}) or keep --max_grad_norm on, then rerun"
    )


@dataclass
class Collapse:
    """Watches the steps for a training that no longer learns; `observe` returns one warning, once a run."""

    zero: int = 0
    frozen: int = 0
    last: float | None = None
    warned: bool = False

    def observe(self, step: int, loss: float, grad_norm: float | None) -> str | None:
        self.zero = self.zero + 1 if grad_norm == 0.0 else 0
        self.frozen = self.frozen + 1 if self.last is not None and abs(loss - self.last) < FROZEN else 0
        self.last = loss
        if self.warned or max(self.zero, self.frozen) < COLLAPSE_STEPS:
            return None
        self.warned = True
        what = "the gradient norm has been exactly 0" if self.zero >= COLLAPSE_STEPS else "the loss has not moved"
        return (
            f"warning: step {step}: {what} for {COLLAPSE_STEPS} steps: training has collapsed (a learning rate far "
            "too high saturates the adapter, so nothing changes any more); the checkpoints from here on hold a dead "
            "model: stop, lower --lr and resume from an earlier checkpoint"
        )
