"""Boson's original release layout: detected before anything loads, converted offline to logits bitwise equal to
the native model, and the converted folder trains, resumes, generates and merges."""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from higgs_train.cli import app
from higgs_train.merge import _probe
from higgs_train.model import load_audio_tokenizer, load_lm
from higgs_train.tiny import write_original_layout
from tests.conftest import train_args

runner = CliRunner()


@pytest.fixture(scope="module")
def original(tiny_model, tmp_path_factory):
    return write_original_layout(tiny_model, tmp_path_factory.mktemp("boson") / "higgs-original")


@pytest.fixture(scope="module")
def converted(original, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "higgs-hf"
    config = tiny_model / "audio_tokenizer" / "config.json"  # the original tokenizer config is incomplete
    result = runner.invoke(app, ["convert", str(original), str(out), "--tokenizer_config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"converted {original} -> {out}; train with --model {out}" in result.output
    return out


def test_converted_logits_are_bitwise_equal_to_the_native_model(tiny_model, converted):
    native, ours = load_lm(str(tiny_model), use_text_head=True), load_lm(str(converted), use_text_head=True)
    assert native.config.to_diff_dict() | {"_name_or_path": ""} == ours.config.to_diff_dict() | {"_name_or_path": ""}
    probe = _probe(native.config)
    with torch.no_grad():
        assert torch.equal(native(**probe).logits, ours(**probe).logits)
    assert torch.equal(native.text_lm_head.weight, ours.text_lm_head.weight)


def test_converted_audio_tokenizer_gives_the_same_codes(tiny_model, converted):
    native = load_audio_tokenizer(str(tiny_model))
    ours = load_audio_tokenizer(str(converted))
    wave = torch.randn(1, 1, 24000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        assert torch.equal(native.encode(wave).audio_codes, ours.encode(wave).audio_codes)
    for (name, a), (_, b) in zip(native.state_dict().items(), ours.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name  # weight norm folded back: equal up to rounding


def test_original_layout_is_detected_before_anything_loads(synth_manifest, tiny_model, original, tmp_path):
    result = runner.invoke(app, train_args(synth_manifest, tmp_path / "run", original, "--max_steps", "1"))
    assert result.exit_code == 2
    assert (
        f"error: --model {original} is in Boson's original layout, which transformers' Higgs Audio v2 cannot load; "
        f"convert it once with `higgs-train convert {original} higgs-original-hf` and pass --model higgs-original-hf"
    ) in result.output
    tok = original / "audio_tokenizer"
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--audio_tokenizer", str(tok), "--max_steps", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and f"--audio_tokenizer {tok} is in Boson's original layout" in result.output
    assert not (tmp_path / "run" / "cache").exists()  # nothing was encoded


def test_converted_folder_trains_resumes_generates_and_merges(synth_manifest, converted, tmp_path):
    run = tmp_path / "run"
    args = train_args(synth_manifest, run, converted, "--save_steps", "1")
    assert runner.invoke(app, [*args, "--max_steps", "2"]).exit_code == 0
    again = runner.invoke(app, [*args, "--max_steps", "3"])
    assert again.exit_code == 0 and f"resumed from {run / 'checkpoint-2'} at step 2" in again.output
    wav = tmp_path / "out.wav"
    gen = ["generate", "--model", str(converted), "--adapter", str(run / "checkpoint-3"), "--text", "hello"]
    result = runner.invoke(app, [*gen, "--out", str(wav), "--max_frames", "20"])
    assert result.exit_code == 0, result.output
    assert wav.stat().st_size > 44
    merged = tmp_path / "merged"
    result = runner.invoke(
        app, ["merge", "--model", str(converted), "--adapter", str(run / "checkpoint-3"), "--output", str(merged)]
    )
    assert result.exit_code == 0, result.output


def test_convert_refuses_what_it_cannot_convert(tiny_model, original, tmp_path):
    result = runner.invoke(app, ["convert", str(tiny_model), str(tmp_path / "x")])
    assert result.exit_code == 2 and "is not in Boson's original layout" in result.output
    assert "if it loads with --model already, it needs no conversion" in result.output
    (tmp_path / "taken").mkdir()
    result = runner.invoke(app, ["convert", str(original), str(tmp_path / "taken")])
    assert result.exit_code == 2 and "already exists; choose a new folder" in result.output


def test_a_tokenizer_pickle_payload_is_never_run(original, tmp_path):
    import shutil

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    tok = tmp_path / "tok"
    shutil.copytree(original / "audio_tokenizer", tok)
    torch.save({"encoder.block.0.weight": Payload()}, tok / "model.pth")
    result = runner.invoke(app, ["convert", str(tok), str(tmp_path / "out")])
    assert result.exit_code == 2 and "does not load as plain tensors (UnpicklingError)" in result.output
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
