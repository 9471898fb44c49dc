"""The checkpoint manager's decisions, one by one (the saves themselves are tested end to end elsewhere)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from higgs_train.checkpoint.manager import CheckpointManager, enforce_save_policy
from higgs_train.checkpoint.save import SaveResult
from higgs_train.config import build_config
from higgs_train.errors import CheckpointError


def manager(**flags):
    cfg = build_config({"train_manifest": "m.jsonl", "output_dir": "out", "save_steps": 5, **flags})
    return CheckpointManager(cfg, SimpleNamespace(is_main_process=True), lambda _m: None)


def test_a_save_is_due_every_save_steps_at_the_last_step_and_when_stopping():
    m = manager()
    assert [s for s in range(1, 13) if m.due(s, 12, False)] == [5, 10, 12]
    assert m.due(3, 12, True)


def test_the_failure_policy_counts_failures_in_a_row():
    ok = SaveResult(step=1, path=Path("out/checkpoint-1"), kind="full", seconds=0.1)
    failed = SaveResult(step=2, path=None, kind=None, seconds=0.1, error="ENOSPC")
    cfg = build_config({"train_manifest": "m.jsonl", "output_dir": "out", "on_save_error": "continue"})
    enforce_save_policy(cfg, [ok, failed, ok, failed, failed])  # 2 in a row: under --max_save_failures 3
    with pytest.raises(CheckpointError, match="save at step 2 failed \\(ENOSPC\\)"):
        enforce_save_policy(cfg, [ok, failed, failed, failed])
    with pytest.raises(CheckpointError):
        enforce_save_policy(build_config({"train_manifest": "m.jsonl", "output_dir": "out"}), [failed])
