import random

import numpy as np
import pytest

from higgs_train.data.batches import BatchPlan, TokenBudgetPlan
from higgs_train.errors import ConfigError


def padding_share(plan, lengths):
    pad = total = 0
    for m in range(plan.batches_per_epoch):
        _, idx = plan.micro_batch(m)
        longest = max(lengths[i] for i in idx)
        pad += sum(longest - lengths[i] for i in idx)
        total += longest * len(idx)
    return pad / total


def test_each_example_once_per_epoch_per_rank_and_deterministic():
    lengths = [random.Random(i).randint(10, 500) for i in range(103)]
    seen = []
    for rank in (0, 1):
        plan = BatchPlan(103, 4, seed=7, rank=rank, world_size=2, lengths=lengths)
        again = BatchPlan(103, 4, seed=7, rank=rank, world_size=2, lengths=lengths)
        batches = [plan.micro_batch(m)[1] for m in range(plan.batches_per_epoch)]
        assert batches == [again.micro_batch(m)[1] for m in range(plan.batches_per_epoch)]
        seen += [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 102  # 51 per rank; one left over this epoch
    assert BatchPlan(103, 4, 7, lengths=lengths).micro_batch(26)[0] == 1  # the next epoch


def test_length_grouping_cuts_padding():
    lengths = [random.Random(i).randint(10, 500) for i in range(1000)]
    grouped = padding_share(BatchPlan(1000, 8, 0, lengths=lengths), lengths)
    plain = padding_share(BatchPlan(1000, 8, 0), lengths)
    assert grouped < plain / 4


def test_eval_split_is_seeded_sized_and_independent_of_paths(tmp_path):
    from higgs_train.data.manifest import Sample, Turn
    from higgs_train.data.pipeline import split_eval

    def rows(root):
        return [
            Sample(f"{root}/m.jsonl:{i}", (Turn("user", text=f"t{i}"), Turn("assistant", audio=f"{root}/c{i}.wav")))
            for i in range(6)
        ]

    train_a, eval_a = split_eval(rows("/a"), seed=1, fraction=0.34)
    train_b, eval_b = split_eval(rows("/elsewhere/b"), seed=1, fraction=0.34)
    assert len(eval_a) == 2 and len(train_a) == 4
    assert [s.turns[0].text for s in eval_a] == [s.turns[0].text for s in eval_b]  # the folder does not matter
    assert len(split_eval(rows("/a"), seed=1, fraction=0.01)[1]) == 1  # at least one row held out
    assert len(split_eval(rows("/a"), seed=1, fraction=0.99)[0]) == 1  # never all of them


def test_world_size_does_not_change_what_trains_together():
    lengths = [random.Random(i).randint(10, 500) for i in range(40)]
    one = BatchPlan(40, 4, seed=3, lengths=lengths)
    ranks = [BatchPlan(40, 2, seed=3, rank=r, world_size=2, lengths=lengths) for r in (0, 1)]
    assert one.batches_per_epoch == ranks[0].batches_per_epoch == 10
    for m in range(one.batches_per_epoch):
        together = sorted(ranks[0].micro_batch(m)[1] + ranks[1].micro_batch(m)[1])
        assert together == sorted(one.micro_batch(m)[1])


def _corpus_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Row lengths as read speech has them: log-normal around 300 tokens, 40 to 2000."""
    return np.clip(np.random.default_rng(seed).lognormal(np.log(300), 0.5, n), 40, 2000).astype(np.int64)


def test_token_budget_bins_fill_the_budget_and_train_each_row_at_most_once_an_epoch():
    lengths = _corpus_lengths(5000)
    plan = TokenBudgetPlan(lengths, 4096, seed=1)
    assert plan.epoch_start(1) == plan.batches_per_epoch
    seen = [plan.micro_batch(m)[1] for m in range(plan.batches_per_epoch)]
    rows = [r for b in seen for r in b]
    assert len(rows) == len(set(rows)) and len(rows) >= 0.99 * len(lengths)
    assert max(lengths[b].sum() for b in seen) <= 4096
    assert lengths[rows].sum() / (len(seen) * 4096) > 0.95  # first-fit decreasing: almost no room left
    assert plan.micro_batch(plan.batches_per_epoch)[0] == 1


def test_token_budget_plan_is_a_pure_function_of_seed_epoch_and_rank():
    """What a resume relies on: a fresh plan gives the same micro-batches at any position, epochs later too; two
    processes train the same bins one process does, split between them."""
    lengths = _corpus_lengths(3000, seed=2)
    a, b = TokenBudgetPlan(lengths, 2048, seed=5), TokenBudgetPlan(lengths, 2048, seed=5)
    far = a.epoch_start(3) + 7
    assert a.micro_batch(far) == b.micro_batch(far) and a.epoch_of(far) == 3
    assert [a.micro_batch(m) for m in range(20)] == [
        TokenBudgetPlan(lengths, 2048, seed=5).micro_batch(m) for m in range(20)
    ]
    ranks = [TokenBudgetPlan(lengths, 2048, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for m in range(ranks[0].batches_per_epoch):  # 1 process, micro-steps 2m and 2m+1 = 2 processes, micro-step m
        assert [a.micro_batch(2 * m), a.micro_batch(2 * m + 1)] == [p.micro_batch(m) for p in ranks]


def test_token_budget_below_the_longest_row_is_refused():
    with pytest.raises(ConfigError, match="below the longest row \\(2000 tokens\\)"):
        TokenBudgetPlan(np.array([100, 2000, 50]), 1024, seed=0)
