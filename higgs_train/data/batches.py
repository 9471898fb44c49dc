"""Which examples go into micro-batch m: a pure function of (seed, epoch, rank), so any position can be resumed.

The data stream is a flat sequence of micro-batches across epochs; optimizer step s consumes micro-batches
[s * grad_accum, (s + 1) * grad_accum). Each epoch is a fresh seeded permutation; rank r of w takes every w-th
example of it, and every rank gets the same number of batches (the few left over are dropped for the epoch).
With lengths given, each window of GROUP_BATCHES batches is sorted by length before it is cut into batches
(so padding stays small), and the batches are then shuffled.
"""

from __future__ import annotations

import math

import torch

GROUP_BATCHES = 64


class BatchPlan:
    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        lengths: list[int] | None = None,
    ):
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
        self.lengths = lengths
        self._epoch = -1
        self._batches: list[list[int]] = []

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.num_examples, generator=gen).tolist()
            order = perm[self.rank :: self.world_size][: self.per_rank]
            bs = self.batch_size
            if self.lengths is not None:
                window = bs * GROUP_BATCHES
                grouped = []
                for start in range(0, len(order), window):
                    grouped += sorted(order[start : start + window], key=lambda i: -self.lengths[i])
                order = grouped
            batches = [order[i : i + bs] for i in range(0, len(order), bs)]
            if self.lengths is not None:
                batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
            self._batches, self._epoch = batches, epoch
        return self._batches

    def micro_batch(self, index: int) -> tuple[int, list[int]]:
        """Returns (epoch, example indices) of micro-batch `index` for this rank."""
        epoch, pos = divmod(index, self.batches_per_epoch)
        return epoch, self._epoch_batches(epoch)[pos]

    def steps_for_epochs(self, num_epochs: float, grad_accum: int) -> int:
        return max(1, math.ceil(num_epochs * self.batches_per_epoch / grad_accum))
