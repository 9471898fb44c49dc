"""The loss: cross-entropy per labelled audio code (summed over codebooks by the native model; here each code weighs
the same across a whole accumulation window and every rank), the text head's optional loss, and the eval loss."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from higgs_train.data.collate import IGNORE, collate
from higgs_train.distributed import global_sum


def audio_loss_sum(model, batch: dict[str, torch.Tensor], codebook_size: int) -> torch.Tensor:
    """Summed cross-entropy over every labelled code; logits at t predict the frame at t + 1.

    The audio head runs only at the positions whose next frame is labelled (`logits_to_keep` as a mask): the native
    forward would compute num_codebooks x codebook_size logits at every position, text and context audio included.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "text_labels")}
    targets = labels[:, 1:]
    keep = torch.zeros(labels.shape[:2], dtype=torch.bool, device=labels.device)
    keep[:, :-1] = (targets != IGNORE).any(-1)
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (kept positions, K * codebook_size)
    picked = logits.float().reshape(-1, codebook_size)
    kept = targets[keep[:, :-1]].reshape(-1)
    torch._check(picked.shape[0] == kept.shape[0])  # the same mask: tells torch.compile, which cannot see it
    return F.cross_entropy(picked, kept, ignore_index=IGNORE, reduction="sum")


class TextLoss:
    """Cross-entropy of the text head on labelled text tokens (--text_loss_weight), from the final hidden states
    that the training forward computes anyway (a hook on the final norm keeps them)."""

    def __init__(self, peft_model):
        base = peft_model.get_base_model()
        self.head = base.text_lm_head
        self._hidden: torch.Tensor | None = None
        base.model.norm.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self._hidden = output

    def __call__(self, text_labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy over the labelled text tokens of the last forward; logits at t predict t + 1."""
        hidden, self._hidden = self._hidden, None
        targets = text_labels[:, 1:]
        keep = targets != IGNORE
        logits = self.head(hidden[:, :-1][keep]).float()
        return F.cross_entropy(logits, targets[keep], reduction="sum")


@dataclass(frozen=True)
class WindowScale:
    """How a window's summed losses become its gradient: divided by what the whole window labels on every rank,
    times the process count (DDP averages gradients)."""

    codes: float  # labelled audio codes of the window, all ranks
    audio: float  # the factor on each micro-batch's audio loss sum
    text_tokens: float | None = None  # labelled text tokens of the window, all ranks (--text_loss_weight)
    text: float | None = None  # the factor on each micro-batch's text loss sum


def window_scale(accelerator, batches: list[dict], text_loss_weight: float = 0.0) -> WindowScale:
    """The normalisation of one accumulation window (a sync: the counts are summed over ranks)."""
    codes = max(1.0, global_sum(accelerator, sum(int((b["labels"] != IGNORE).sum()) for b in batches)))
    if not text_loss_weight:
        return WindowScale(codes, accelerator.num_processes / codes)
    text = max(1.0, global_sum(accelerator, sum(int((b["text_labels"][:, 1:] != IGNORE).sum()) for b in batches)))
    return WindowScale(
        codes, accelerator.num_processes / codes, text, accelerator.num_processes * text_loss_weight / text
    )


@torch.no_grad()
def evaluate(model, accelerator, examples, layout, batch_size: int, codebook_size: int) -> float:
    """Mean loss per labelled code over the eval set, sharded across ranks (every rank runs as many batches)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(examples), world))
    per_rank = math.ceil(len(examples) / world)
    mine += [None] * (per_rank - len(mine))  # padding batches keep ranks in step and count for nothing
    model.eval()
    ce, codes = 0.0, 0
    for start in range(0, per_rank, batch_size):
        chunk = mine[start : start + batch_size]
        real = [i for i in chunk if i is not None]
        batch = collate([examples[i] for i in real or [0]], layout)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        loss = audio_loss_sum(model, batch, codebook_size)
        if real:
            ce += loss.item()
            codes += int((batch["labels"] != IGNORE).sum())
    model.train()
    return global_sum(accelerator, ce) / max(1.0, global_sum(accelerator, codes))
