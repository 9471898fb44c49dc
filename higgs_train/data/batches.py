"""Which examples go into micro-batch m: a pure function of (seed, epoch, rank), so any position can be resumed.

The data stream is a flat sequence of micro-batches across epochs; optimizer step s consumes micro-batches
[s * grad_accum, (s + 1) * grad_accum). Each epoch is a fresh seeded permutation (the few rows that do not
divide by the world size are left out for that epoch), cut into global batches of batch_size x world_size; rank r
takes every w-th row of each, so 2 processes x batch 1 train on exactly the rows 1 process x batch 2 does. With
lengths given, each window of GROUP_BATCHES global batches is sorted by length before it is cut (so padding
stays small), and the global batches are then shuffled.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from higgs_train.errors import ConfigError

GROUP_BATCHES = 64


class BatchPlan:
    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        lengths=None,  # per example, any sequence of ints
    ):
        per_rank = num_examples // world_size
        if per_rank == 0:
            raise ConfigError(
                f"{num_examples} usable rows cannot feed {world_size} processes (each needs at least one); add rows "
                "or run fewer processes"
            )
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = per_rank
        self.batches_per_epoch = math.ceil(per_rank / batch_size)
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self._epoch = -1
        self._order = np.empty(0, np.int64)
        self._batches: np.ndarray | None = None

    def _epoch_order(self, epoch: int) -> None:
        """The epoch's order (numpy, once per epoch): its permutation, length-grouped in windows, and the order of
        its global batches; a micro-batch is then a slice of it."""
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_examples, generator=gen).numpy()[: self.per_rank * self.world_size]
            step = self.batch_size * self.world_size  # one global batch: a micro-batch on every rank
            batches = None
            if self.lengths is not None:  # longest first within each window; ties keep the permutation's order
                window = np.arange(len(order)) // (step * GROUP_BATCHES)
                order = order[np.lexsort((-self.lengths[order], window))]
                batches = torch.randperm(math.ceil(len(order) / step), generator=gen).numpy()
            self._order, self._batches, self._epoch = order, batches, epoch

    def micro_batch(self, index: int) -> tuple[int, list[int]]:
        """Returns (epoch, example indices) of micro-batch `index` for this rank."""
        epoch, pos = divmod(index, self.batches_per_epoch)
        self._epoch_order(epoch)
        step = self.batch_size * self.world_size
        j = int(self._batches[pos]) if self._batches is not None else pos
        # every rank deals from the same global batches, so the world size never changes what trains together
        return epoch, self._order[j * step : (j + 1) * step][self.rank :: self.world_size].tolist()

    def steps_for_epochs(self, num_epochs: float, grad_accum: int) -> int:
        return max(1, math.ceil(num_epochs * self.batches_per_epoch / grad_accum))
