"""The memory plan (from a config alone, on the meta device) and --batch_size auto (out-of-memory injected)."""

from __future__ import annotations

import json
import weakref

import pytest
import torch

from higgs_train.cli import app
from higgs_train.config import build_config
from higgs_train.errors import ConfigError
from higgs_train.layouts import released_lm_config
from higgs_train.plan import GIB, auto_batch, memory_plan, probe_batch
from tests.conftest import raising, runner, train_args


@pytest.fixture(scope="module")
def released_plan():
    cfg = build_config({"mixed_precision": "bf16"}, require_data=False)
    return memory_plan(released_lm_config(), cfg)


def test_plan_parts_add_up_and_batches_follow_capacity(released_plan):
    p = released_plan
    assert p.seq_len == 2048  # the released max_position_embeddings: the longest row prepare lets through
    assert 9.9 * GIB < p.base_weights < 10.1 * GIB  # 5.4B frozen weights in bf16
    assert 0.58 * GIB < p.lora_state < 0.6 * GIB  # 39.5M LoRA parameters x (weight, grad, 2 AdamW moments) fp32
    for gc in (False, True):
        assert sum(p.parts(4, gc).values()) == pytest.approx(p.total(4, gc))
        sizes = [p.largest_batch(gb * 1e9, gc) for gb in (24, 40, 48, 80, 141)]
        assert sizes == sorted(sizes) and p.total(sizes[-1], gc) <= 141e9 < p.total(sizes[-1] + 1, gc)
    assert p.act_per_token_gc < p.act_per_token / 5  # checkpointing keeps about one layer in 28
    assert p.largest_batch(24e9, False) == 0 < p.largest_batch(24e9, True)


def test_plan_command_needs_only_a_config_json(tmp_path):
    released_lm_config().save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    result = runner.invoke(app, ["plan", "--model", str(tmp_path), "--mixed_precision", "bf16", "--batch_size", "4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "estimated peak GPU memory at batch 4 x 2048 tokens per process:"
    assert lines[1].startswith("  frozen base weights") and lines[1].endswith("10.02 GiB")
    assert any(line.startswith("    80 GB card") and line.endswith("batch 4: fits") for line in lines)
    assert any(line.startswith("    24 GB card") and line.endswith("needs --gradient_checkpointing") for line in lines)


def test_probe_backs_off_on_out_of_memory_without_keeping_the_failed_try():
    tried, alive = [], []

    def trial(batch):
        tried.append(batch)
        held = torch.zeros(batch, 1000)
        alive.append(weakref.ref(held))
        if batch > 3:
            raise torch.OutOfMemoryError(f"CUDA out of memory at batch {batch} (injected)")

    said = []
    assert probe_batch(trial, 12, said.append) == 3
    assert tried == [12, 9, 6, 4, 3]
    assert all(ref() is None for ref in alive)  # nothing of a failed try survives (tracebacks hold frames)
    assert said[0] == "--batch_size auto: batch 12 ran out of memory; trying 9"
    with pytest.raises(ConfigError, match="not even one row of the longest length fits; use --gradient_checkpointing"):
        probe_batch(raising(torch.OutOfMemoryError("always")), 2, lambda m: None)


def test_auto_batch_keeps_the_global_batch_and_caps_at_the_rows(released_plan):
    capacity = released_plan.total(8, True) + 1

    def fails_above_3(batch):
        if batch > 3:
            raise torch.OutOfMemoryError("oom (injected)")

    assert auto_batch(released_plan, capacity, True, rows=100, grad_accum=2) == (8, 2)
    assert auto_batch(released_plan, capacity, True, 100, 2, fails_above_3, lambda m: None) == (3, 6)  # 8x2 ~ 3x6
    assert auto_batch(released_plan, capacity, True, rows=5, grad_accum=1) == (5, 1)
    with pytest.raises(ConfigError, match="one row of 2048 tokens needs .* GiB, more than the 1.0 GiB here"):
        auto_batch(released_plan, GIB, False, 100, 1)


def test_batch_size_auto_on_the_cpu_is_recorded_and_kept_on_resume(synth_manifest, tiny_model, tmp_path):
    run = tmp_path / "run"
    args = train_args(synth_manifest, run, tiny_model, "--batch_size", "auto", "--save_steps", "1")
    result = runner.invoke(app, [*args, "--max_steps", "1"])
    assert result.exit_code == 0, result.output
    assert "--batch_size auto: 6 rows of up to" in result.output and "x --grad_accum 1 (plan for" in result.output
    saved = json.loads((run / "checkpoint-1" / "trainer_state.json").read_text())["config"]
    assert (saved["batch_size"], saved["grad_accum"]) == (6, 1)  # the tiny model: all 6 rows fit in host memory
    assert json.loads((run / "config.json").read_text())["batch_size"] == 6
    again = runner.invoke(app, [*args, "--max_steps", "2"])
    assert again.exit_code == 0 and "--batch_size auto: the checkpoint's batch 6 x --grad_accum 1" in again.output


def test_doctor_gives_the_plans_verdict_for_each_gpu(tiny_model, monkeypatch):
    from higgs_train.doctor import _plan_checks

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: ((40 if i == 0 else 0.5) * GIB, 80 * GIB))
    big, small = _plan_checks(str(tiny_model))
    assert (
        big.name == "plan gpu 0" and big.ok and "batch 1 x 4096 needs 1.1 GiB of 40.0 free; largest 743" in big.detail
    )
    assert small.name == "plan gpu 1" and not small.ok and "needs 1.1 GiB of 0.5 free; largest 0" in small.detail


def test_a_token_budget_plans_one_packed_sequence_of_that_length(tmp_path):
    released_lm_config().save_pretrained(tmp_path)
    args = ["plan", "--model", str(tmp_path), "--mixed_precision", "bf16", "--max_tokens_per_batch", "8192"]
    result = runner.invoke(app, [*args, "--packing"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "estimated peak GPU memory at batch 1 x 8192 tokens per process:"
    assert lines[1].startswith("  packed attention mask (dense)")  # sdpa: the block-diagonal mask is dense
    flex = runner.invoke(app, [*args, "--packing", "--attn_implementation", "flex_attention"])
    assert "packed attention mask" not in flex.output


def test_batch_size_auto_with_a_token_budget_checks_the_budget_fits(synth_manifest, tiny_model, tmp_path):
    from dataclasses import replace

    from higgs_train.plan import check_budget

    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--batch_size", "auto", "--max_steps", "1")
    result = runner.invoke(app, [*args, "--packing", "--max_tokens_per_batch", "600"])
    assert result.exit_code == 0, result.output
    assert "--batch_size auto: micro-batches of 600 tokens fit" in result.output
    cfg = build_config({"mixed_precision": "bf16", "packing": True, "max_tokens_per_batch": 8192}, require_data=False)
    mem = memory_plan(released_lm_config(), cfg, seq_len=8192)
    with pytest.raises(
        ConfigError, match=r"--max_tokens_per_batch 8192 needs .* GiB, more than the 24\.0 GiB here; \d+ tokens fit"
    ):
        check_budget(mem, 24 * GIB, cfg, print)
    assert check_budget(replace(mem, seq_len=1024, packed_mask=1024**2), 80 * GIB, cfg, print).batch_size == 1
