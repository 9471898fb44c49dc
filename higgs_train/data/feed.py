"""What the loop trains on next: the run's batch plan (rows, a token budget, or none for a stream) and each
micro-batch of this rank, padded, bucketed for --compile or packed, advancing the data position."""

from __future__ import annotations

import torch

from higgs_train import faults
from higgs_train.checkpoint.state import TrainingProgress
from higgs_train.config import TrainConfig
from higgs_train.data.batches import BatchPlan, TokenBudgetPlan
from higgs_train.data.collate import collate, pack
from higgs_train.data.pipeline import TrainingData
from higgs_train.model import COMPILE_BUCKET


def batch_plan(cfg: TrainConfig, data: TrainingData, rank: int, world: int, seed: int):
    """--max_tokens_per_batch: a TokenBudgetPlan; else a BatchPlan (length-grouped unless --no-group_by_length);
    None for --streaming (the stream draws its own batches)."""
    if data.stream is not None:
        return None
    if cfg.max_tokens_per_batch:
        return TokenBudgetPlan(data.train.lengths, cfg.max_tokens_per_batch, seed, rank, world)
    lengths = data.train.lengths if cfg.group_by_length else None
    return BatchPlan(len(data.train), cfg.batch_size, seed, rank, world, lengths)


def next_batch(
    cfg: TrainConfig,
    data: TrainingData,
    plan: BatchPlan | TokenBudgetPlan | None,
    progress: TrainingProgress,
    world: int,
) -> dict[str, torch.Tensor]:
    """The next micro-batch of this rank (from the plan, or drawn from the stream), advancing the data position in
    `progress`."""
    if data.stream is not None:
        examples = data.stream.take(cfg.batch_size)
        epoch = data.stream.epoch
    else:
        epoch, indices = plan.micro_batch(progress.micro_batches)
        examples = [data.train[i] for i in indices]
    progress.micro_batches += 1
    faults.count("data", progress.micro_batches)
    faults.failpoint("micro_batch")
    progress.epoch = epoch
    progress.samples_seen += len(examples) * world
    if cfg.packing:
        batch = pack(examples, data.layout)
    else:  # compiled: lengths padded to buckets, so the compiled graphs' shapes stay few
        batch = collate(examples, data.layout, COMPILE_BUCKET if cfg.compile else 1)
    if torch.cuda.is_available():  # pinned host memory lets the copy to the GPU run asynchronously
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch
