"""--quantize (QLoRA) on the CPU with the tiny model: the base in 4 bits (bitsandbytes), LoRA in full precision; a
run trains, saves, verifies, resumes bitwise, and its adapter generates, scores and merges on the full-precision
base; the refusals come before anything loads."""

import json

import pytest
import torch
from safetensors.torch import load_file

from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.cli import app
from higgs_train.config import build_config
from higgs_train.errors import CheckpointError, ConfigError, Interrupted
from higgs_train.faults import ENV
from higgs_train.train import train
from tests.conftest import quiet, run_cfg, runner

pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install -e '.[qlora]')")
KW = {"max_steps": 4, "save_steps": 2, "lr": 5e-3, "batch_size": 2, "grad_accum": 2, "quantize": "nf4"}


def cfg_for(manifest, out, model, **kw):
    return run_cfg(manifest, out, model, **{**KW, **kw})


@pytest.fixture(scope="module")
def qlora_run(synth_manifest, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora") / "run"
    result = train(cfg_for(synth_manifest, out, tiny_model), log=quiet, progress_bar=False)
    return out, result


def test_the_base_is_quantized_and_the_adapter_is_not(qlora_run):
    import bitsandbytes as bnb

    out, result = qlora_run
    layers = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.dtype == torch.uint8 for m in layers)  # the frozen base stays packed 4-bit
    assert all(p.dtype == torch.float32 for p in result.model.parameters() if p.requires_grad)
    assert result.progress.step == 4 and verify_checkpoint(out / "checkpoint-4").ok
    assert json.loads((out / "config.json").read_text())["quantize"] == "nf4"
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["config"]["quantize"] == "nf4"


def test_a_quantized_run_resumes_bitwise(qlora_run, synth_manifest, tiny_model, tmp_path, monkeypatch):
    out, _ = qlora_run
    monkeypatch.setenv(ENV, "micro_batch@5:sigterm")  # inside step 3's window: step 2 is saved
    cfg = cfg_for(synth_manifest, tmp_path / "b", tiny_model)
    with pytest.raises(Interrupted, match="stopped by signal at step 2"):
        train(cfg, log=quiet, progress_bar=False)
    monkeypatch.delenv(ENV)
    assert train(cfg, log=quiet, progress_bar=False).resumed_from.name == "checkpoint-2"
    a = load_file(out / "checkpoint-4" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoint-4" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_with_another_quantize_is_refused(qlora_run, synth_manifest, tiny_model):
    out, _ = qlora_run
    with pytest.raises(CheckpointError, match="trained with --quantize 'nf4' but this run has 'none'"):
        train(cfg_for(synth_manifest, out, tiny_model, quantize="none", max_steps=6), log=quiet, progress_bar=False)


def test_the_adapter_generates_merges_and_exports_on_the_full_precision_base(qlora_run, tiny_model, tmp_path):
    out, _ = qlora_run
    checkpoint = str(out / "checkpoint-4")
    wav = tmp_path / "s.wav"
    args = ["generate", "--model", str(tiny_model), "--adapter", checkpoint, "--text", "hello", "--out", str(wav)]
    result = runner.invoke(app, [*args, "--max_frames", "12"])
    assert result.exit_code == 0, result.output
    assert wav.stat().st_size > 44
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", "--model", str(tiny_model), "--adapter", checkpoint, "--output", str(merged)])
    assert result.exit_code == 0, result.output
    assert "max logit difference vs base + adapter" in result.output
    shipped = tmp_path / "shipped"
    result = runner.invoke(app, ["export", str(out), str(shipped), "--checkpoint", checkpoint])
    assert result.exit_code == 0, result.output
    assert "trained on a nf4-quantized base (QLoRA)" in (shipped / "README.md").read_text()


def test_the_adapter_scores(qlora_run, synth_manifest, tiny_whisper):
    out, _ = qlora_run
    args = ["score", str(out), "--asr_model", str(tiny_whisper), "--score_manifest", str(synth_manifest)]
    result = runner.invoke(app, [*args, "--score_samples", "2", "--checkpoint", str(out / "checkpoint-4")])
    assert result.exit_code == 0, result.output


def test_a_missing_bitsandbytes_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    with pytest.raises(ConfigError, match=r"--quantize nf4 needs bitsandbytes.*pip install -e '\.\[qlora\]'"):
        build_config({"train_manifest": "m.jsonl", "output_dir": "out", "quantize": "nf4"})
    build_config({"quantize": "nf4"}, require_data=False)  # `plan` loads no weights: no bitsandbytes needed


def test_sharded_modes_refuse_a_quantized_base_before_loading(monkeypatch):
    from higgs_train import sharded

    cfg = build_config({"quantize": "nf4"}, require_data=False)
    for mode in (sharded.FSDP2, sharded.ZERO2, sharded.ZERO3):
        monkeypatch.setattr(sharded, "sharding", lambda _accelerator, mode=mode: mode)
        with pytest.raises(ConfigError, match=f"--quantize nf4 under {mode}: .* run QLoRA under DDP"):
            sharded.check_supported(None, cfg)
    monkeypatch.setattr(sharded, "sharding", lambda _accelerator: sharded.PLAIN)
    sharded.check_supported(None, cfg)  # DDP: every GPU holds the whole quantized base


def test_plan_counts_the_quantized_base_and_lists_the_small_cards(tmp_path):
    from higgs_train.layouts import released_lm_config
    from higgs_train.plan import GIB, plan_for, setting_that_fits

    released_lm_config().save_pretrained(tmp_path)
    args = ["plan", "--model", str(tmp_path), "--mixed_precision", "bf16", "--gradient_checkpointing"]
    result = runner.invoke(app, [*args, "--quantize", "nf4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    base = float(lines[1].split()[-2])
    assert 3.0 < base < 3.6  # 4.5B linear weights at 0.52 bytes + embeddings and heads in bf16 (10.0 GiB unquantized)
    assert any(line.startswith("    12 GB card") and "batch 1: " in line for line in lines)
    cfg = build_config({"model": str(tmp_path), "mixed_precision": "bf16"}, require_data=False)
    full = plan_for(cfg)
    flags = {"model": str(tmp_path), "quantize": "nf4", "mixed_precision": "bf16"}
    quantized = plan_for(build_config(flags, require_data=False))
    assert quantized.base_weights < full.base_weights / 2.5 and full.base_weights > 9.9 * GIB
    assert setting_that_fits(cfg, 12e9) == "--mixed_precision bf16 --gradient_checkpointing --quantize nf4"
    assert setting_that_fits(cfg, 80e9) == "--mixed_precision bf16"
    assert setting_that_fits(cfg, 4e9) is None
