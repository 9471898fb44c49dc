"""Which examples go into micro-batch m: a pure function of (seed, epoch, rank), so any position can be resumed.

The data stream is a flat sequence of micro-batches across epochs; optimizer step s consumes micro-batches
[s * grad_accum, (s + 1) * grad_accum). Each epoch is a fresh seeded permutation; rank r of w takes every w-th
example of it, and every rank gets the same number of batches (the few left over are dropped for the epoch).
"""

from __future__ import annotations

import math

import torch


class BatchPlan:
    def __init__(self, num_examples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        per_rank = num_examples // world_size
        if per_rank == 0:
            raise ValueError(f"{num_examples} examples cannot feed {world_size} processes")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = per_rank
        self.batches_per_epoch = math.ceil(per_rank / batch_size)
        self._perm_epoch = -1
        self._perm: list[int] = []

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.num_examples, generator=gen).tolist()
            self._perm = perm[self.rank :: self.world_size][: self.per_rank]
            self._perm_epoch = epoch
        return self._perm

    def micro_batch(self, index: int) -> tuple[int, list[int]]:
        """Returns (epoch, example indices) of micro-batch `index` for this rank."""
        epoch, pos = divmod(index, self.batches_per_epoch)
        order = self._epoch_order(epoch)
        return epoch, order[pos * self.batch_size : (pos + 1) * self.batch_size]

    def steps_for_epochs(self, num_epochs: float, grad_accum: int) -> int:
        return max(1, math.ceil(num_epochs * self.batches_per_epoch / grad_accum))
