"""The learning-rate schedule: linear warm-up, then cosine decay to zero at the last step."""

from __future__ import annotations

import math

import torch


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR with the run's warm-up and length; `jump_to` puts it at any step with any peak rate, so a resume
    runs the schedule of its own settings (a new --lr or a longer --max_steps), never the one saved."""

    def __init__(self, optimizer, warmup_steps: int, total_steps: int):
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def jump_to(self, step: int, peak_lr: float) -> float:
        """Set the schedule (and the optimizer's rates) to `step` under `peak_lr`; returns the next step's rate."""
        for group in self.optimizer.param_groups:
            group["initial_lr"] = peak_lr
        self.base_lrs = [peak_lr] * len(self.optimizer.param_groups)
        self.last_epoch = step
        lr = peak_lr * self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)  # what get_last_lr() reports until the next step
        return lr

    def describe(self) -> str:
        return f"--warmup_steps {self.warmup_steps}, cosine to step {self.total_steps}"
