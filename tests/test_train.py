"""End to end on the tiny model: CLI runs, checkpoints, falling loss, adapter reload, resume equivalence."""

import json

import pytest
import torch
from safetensors.torch import load_file

from higgs_train.checkpoint.state import read_rng
from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.cli import app
from higgs_train.errors import Interrupted
from higgs_train.faults import ENV
from higgs_train.train import train
from tests.conftest import load_base, quiet, run_cfg, runner, train_args


def test_cli_run_with_dash_spellings(synth_manifest, tiny_model, tmp_path):
    args = [
        "--train-manifest",
        str(synth_manifest),
        "--output-dir",
        str(tmp_path / "run"),
        "--model",
        str(tiny_model),
        "--max-steps",
        "3",
        "--save-steps",
        "2",
        "--batch-size",
        "2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "done: step 3" in result.output
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (tmp_path / "run" / "latest").read_text() == "checkpoint-3\n"


def test_full_run_loss_falls_and_adapter_reloads(synth_manifest, tiny_model, tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    cfg = run_cfg(synth_manifest, out, tiny_model, max_steps=12, save_steps=5, lr=1e-2, batch_size=3, lora_dropout=0.0)
    result = train(cfg, log=quiet, progress_bar=False)
    assert [s.step for s in result.saves] == [5, 10, 12]
    assert all(verify_checkpoint(s.path).ok for s in result.saves)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13)) and {"loss", "lr"} <= set(rows[0])
    losses = [r["loss"] for r in rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses

    reloaded = PeftModel.from_pretrained(load_base(str(tiny_model)).model, str(out / "checkpoint-12")).eval()
    trained = result.model.eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=0, atol=0)


def test_voice_cloning_run_on_real_clips(voice_manifest, tiny_model, tmp_path):
    result = runner.invoke(app, train_args(voice_manifest, tmp_path / "run", tiny_model, "--max_steps", "2"))
    assert result.exit_code == 0, result.output
    assert verify_checkpoint(tmp_path / "run" / "checkpoint-2").ok


def test_resume_after_signal_is_bitwise_equal(synth_manifest, tiny_model, tmp_path, monkeypatch):
    kw = {"max_steps": 8, "save_steps": 4, "lr": 5e-3, "batch_size": 2, "grad_accum": 2, "warmup_steps": 2}
    straight = train(run_cfg(synth_manifest, tmp_path / "a", tiny_model, **kw), log=quiet, progress_bar=False)

    # a real SIGTERM inside step 3's window: the window is dropped at the next micro-batch, step 2 is saved
    monkeypatch.setenv(ENV, "micro_batch@5:sigterm")
    cfg_b = run_cfg(synth_manifest, tmp_path / "b", tiny_model, **kw)
    with pytest.raises(Interrupted, match="stopped by signal at step 2; rerun the same command to resume"):
        train(cfg_b, log=quiet, progress_bar=False)
    assert verify_checkpoint(tmp_path / "b" / "checkpoint-2").ok
    monkeypatch.undo()
    resumed = train(cfg_b, log=quiet, progress_bar=False)
    assert resumed.resumed_from.name == "checkpoint-2"
    assert resumed.progress.step == straight.progress.step == 8

    for name in ("adapter_model.safetensors",):
        a, b = load_file(tmp_path / "a" / "checkpoint-8" / name), load_file(tmp_path / "b" / "checkpoint-8" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = torch.load(tmp_path / "a" / "checkpoint-8" / "optimizer.pt", weights_only=True)
    opt_b = torch.load(tmp_path / "b" / "checkpoint-8" / "optimizer.pt", weights_only=True)
    for i, state in opt_a["state"].items():
        assert all(torch.equal(state[k], opt_b["state"][i][k]) for k in state)
    rng_a = read_rng(tmp_path / "a" / "checkpoint-8" / "rng_state_0.safetensors")
    rng_b = read_rng(tmp_path / "b" / "checkpoint-8" / "rng_state_0.safetensors")
    assert torch.equal(rng_a["torch"], rng_b["torch"]) and rng_a["python"] == rng_b["python"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # no duplicated rows after the resume


def test_stop_between_micro_batches_of_a_long_window(synth_manifest, tiny_model, tmp_path, monkeypatch):
    """A scheduler's grace period is short: SIGTERM inside a 40-micro-batch window stops at the next micro-batch."""
    import higgs_train.train as train_module

    forwards = []
    real_loss = train_module.audio_loss_sum
    monkeypatch.setattr(train_module, "audio_loss_sum", lambda *a: forwards.append(1) or real_loss(*a))
    monkeypatch.setenv(ENV, "micro_batch@3:sigterm")  # a real SIGTERM while the window's batches are gathered
    cfg = run_cfg(synth_manifest, tmp_path / "run", tiny_model, max_steps=2, grad_accum=40)
    with pytest.raises(Interrupted, match="stopped by signal at step 0"):
        train(cfg, log=quiet, progress_bar=False)
    assert len(forwards) == 1  # the window's first micro-batch, then the stop: not 40


def test_gradient_checkpointing_is_active_from_step_1_without_an_eval_set(
    synth_manifest, tiny_model, tmp_path, monkeypatch
):
    import higgs_train.train as train_module

    seen = []
    real_loss = train_module.audio_loss_sum

    def spy(model, *args):
        base = model.get_base_model()
        seen.append((model.training, base.model.gradient_checkpointing))
        return real_loss(model, *args)

    monkeypatch.setattr(train_module, "audio_loss_sum", spy)
    cfg = run_cfg(synth_manifest, tmp_path / "run", tiny_model, max_steps=1, gradient_checkpointing=True)
    train(cfg, log=quiet, progress_bar=False)
    assert seen[0] == (True, True)  # train mode: the checkpointed path runs at the first step


def test_rerun_of_finished_run_resumes_and_stops(synth_manifest, tiny_model, tmp_path):
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "2")
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 0
    assert "resumed from" in again.output and "adapter: " in again.output


def test_lora_shape_mismatch_refused(synth_manifest, tiny_model, tmp_path):
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "1")
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, [*args, "--max_steps", "2", "--lora_r", "4"])
    assert result.exit_code == 3
    assert "was trained with --lora_r 16 but this run has 4; pass the same --lora_r" in result.output


def test_packed_run_trains_as_the_padded_one(synth_manifest, tiny_model, tmp_path):
    """--packing: the same rows in one sequence per micro-batch give the padded run's losses step for step (no
    dropout: nothing else differs), and a packed run resumes like any other."""
    kw = {"max_steps": 3, "save_steps": 2, "lr": 1e-2, "batch_size": 3, "lora_dropout": 0.0}
    padded = train(run_cfg(synth_manifest, tmp_path / "padded", tiny_model, **kw), log=quiet, progress_bar=False)
    said = []
    packed = train(run_cfg(synth_manifest, tmp_path / "packed", tiny_model, packing=True, **kw), said.append, False)
    torch.testing.assert_close(torch.tensor(packed.losses), torch.tensor(padded.losses), rtol=1e-4, atol=1e-5)
    assert any("--packing with sdpa" in line for line in said)
    rows = [json.loads(line) for line in (tmp_path / "packed" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["padding_share"] == 0 for r in rows if "padding_share" in r)


def test_token_budget_run_with_packing_has_no_padding(synth_manifest, tiny_model, tmp_path):
    out = tmp_path / "run"
    cfg = run_cfg(synth_manifest, out, tiny_model, max_steps=2, packing=True, max_tokens_per_batch=600)
    result = train(cfg, log=quiet, progress_bar=False)
    assert result.progress.step == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["padding_share"] for r in rows if "padding_share" in r] == [0, 0]
    assert all(r["tokens_per_s"] > 0 for r in rows if "tokens_per_s" in r)
