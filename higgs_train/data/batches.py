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

    def epoch_start(self, epoch: int) -> int:
        """The index of epoch `epoch`'s first micro-batch."""
        return epoch * self.batches_per_epoch

    def epoch_of(self, index: int) -> int:
        return index // self.batches_per_epoch

    def position_for_samples(self, samples_seen: int) -> int:
        """The micro-batch index after `samples_seen` rows over all ranks (--on_data_change continue)."""
        return samples_seen // (self.batch_size * self.world_size)


WINDOW_ROWS = 2048  # --max_tokens_per_batch packs rows within windows of this many rows of the epoch's permutation


class TokenBudgetPlan:
    """--max_tokens_per_batch: micro-batches filled to a token budget instead of a row count, a pure function of
    (seed, epoch, rank) like BatchPlan. Each epoch's seeded permutation is cut into windows of WINDOW_ROWS rows; each
    window is packed first-fit-decreasing into bins of at most `budget` tokens, and the bins are shuffled (neither
    depends on the world size). Micro-step j of rank r trains bin j * world_size + r, so 2 processes train in one
    step exactly the bins 1 process trains in two (with twice the --grad_accum), as BatchPlan does for rows; the
    bins that do not divide by the world size are left out of that epoch. An epoch's bin count depends on its
    permutation, so the plan packs the epochs before a position once (each O(rows))."""

    def __init__(self, lengths, budget: int, seed: int, rank: int = 0, world_size: int = 1):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.num_examples, self.budget, self.seed = len(self.lengths), budget, seed
        self.rank, self.world_size = rank, world_size
        longest = int(self.lengths.max()) if len(self.lengths) else 0
        if longest > budget:
            raise ConfigError(
                f"--max_tokens_per_batch {budget} is below the longest row ({longest} tokens); raise it to at least "
                f"{longest} or lower --max_duration"
            )
        self.batch_size = max(1, budget // max(1, int(np.median(self.lengths))))  # rows of a typical micro-batch
        self._epochs: list[tuple[list[np.ndarray], np.ndarray]] = []  # per epoch: bins, their shuffled order
        self._starts = [0]  # micro-batch index at which each epoch starts, per rank
        self.batches_per_epoch = self._epoch(0)[1].size // world_size
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"{self.num_examples} rows fill fewer than {world_size} micro-batches of --max_tokens_per_batch "
                f"{budget}; lower it or run fewer processes"
            )

    def _epoch(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        while len(self._epochs) <= epoch:
            e = len(self._epochs)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            order = torch.randperm(self.num_examples, generator=gen).numpy()
            bins = [
                b for start in range(0, len(order), WINDOW_ROWS) for b in self._pack(order[start : start + WINDOW_ROWS])
            ]
            shuffled = torch.randperm(len(bins), generator=gen).numpy()
            self._epochs.append((bins, shuffled))
            self._starts.append(self._starts[-1] + len(bins) // self.world_size)
        return self._epochs[epoch]

    def _pack(self, rows: np.ndarray) -> list[np.ndarray]:
        """First-fit decreasing: longest first, each into the first bin with room (ties keep the permutation)."""
        rows = rows[np.argsort(-self.lengths[rows], kind="stable")]
        room = np.empty(0, np.int64)
        members: list[list[int]] = []
        for row in rows.tolist():
            fits = np.flatnonzero(room >= self.lengths[row])
            if len(fits):
                j = int(fits[0])
                room[j] -= self.lengths[row]
                members[j].append(row)
            else:
                room = np.append(room, self.budget - self.lengths[row])
                members.append([row])
        return [np.asarray(m, np.int64) for m in members]

    def epoch_of(self, index: int) -> int:
        epoch = 0
        while index >= self._starts[epoch + 1]:
            epoch += 1
            self._epoch(epoch)
        return epoch

    def micro_batch(self, index: int) -> tuple[int, list[int]]:
        epoch = self.epoch_of(index)
        bins, shuffled = self._epoch(epoch)
        step = index - self._starts[epoch]
        return epoch, bins[int(shuffled[step * self.world_size + self.rank])].tolist()

    def epoch_start(self, epoch: int) -> int:
        self._epoch(epoch)
        return self._starts[epoch]

    def steps_for_epochs(self, num_epochs: float, grad_accum: int) -> int:
        """From the first epoch's batch count (later epochs pack to within a few batches of it)."""
        return max(1, math.ceil(num_epochs * self.batches_per_epoch / grad_accum))

    def position_for_samples(self, samples_seen: int) -> int:
        per_batch = self.num_examples / max(1, len(self._epoch(0)[0]))  # rows of a micro-batch on average
        return int(samples_seen / (per_batch * self.world_size))
