"""Around the run: generate, samples during training, merge, TensorBoard, plot and doctor, on the tiny model."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import higgs_train.generate as generate_module
import higgs_train.listening as listening
from higgs_train.cli import app
from higgs_train.layouts import tensor_names
from tests.conftest import load_base, runner, train_args


@pytest.fixture(scope="module")
def trained(listened_run):
    return listened_run, None


def test_generate_writes_a_wav_whose_length_follows_the_frames(trained, tiny_model, voices, tmp_path):
    out, _ = trained
    wav = tmp_path / "s.wav"
    args = [
        "generate",
        "--model",
        str(tiny_model),
        "--adapter",
        str(out / "checkpoint-4"),
        "--text",
        "good morning",
        "--ref_audio",
        str(voices / "en_woman.wav"),
        "--ref_text",
        "reference words",
        "--out",
        str(wav),
        "--max_frames",
        "30",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data, rate = sf.read(wav)
    frames = int(result.output.split("wrote ")[1].split(": ")[1].split(" frames")[0])
    assert rate == 24000 and len(data) == frames * 960 and frames <= 30


def test_generated_length_matches_the_generated_codes(tiny_model, monkeypatch):
    base = load_base(str(tiny_model))
    seen = {}
    real_generate = base.model.generate

    def spy(**kw):
        out = real_generate(**kw)
        seen["ids"] = out
        return out

    monkeypatch.setattr(base.model, "generate", spy)
    speech = generate_module.generate_speech(base.model, base.processor, "hi", max_new_frames=25)
    assert speech.frames == generate_module._generated_frames(seen["ids"][0], base.processor)
    assert len(speech.wave) == speech.frames * 960


def test_generated_frames_counted_by_hand():
    from types import SimpleNamespace

    bos, eos, k = 9, 8, 3  # 3 codebooks: the delay pattern adds k - 1 = 2 rows
    stream = SimpleNamespace(audio_stream_bos_id=bos, audio_stream_eos_id=eos)
    rows = [[0] * k, [0] * k, [bos] * k] + [[1, 2, 3]] * 6 + [[eos] * k, [eos] * k]
    assert generate_module._generated_frames(torch.tensor(rows), stream) == 4  # 6 rows - 2 delay rows
    assert generate_module._generated_frames(torch.tensor(rows[:-2]), stream) == 4  # stopped by the cap: same
    assert generate_module._generated_frames(torch.tensor(rows[:5]), stream) == 0  # 2 rows: all delay


def test_samples_during_training_and_tensorboard(trained):
    out, output = trained
    for step in (2, 4):
        data, rate = sf.read(out / "samples" / f"step-{step}.wav")
        assert rate == 24000 and len(data) % 960 == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"audio": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "eval/loss"} <= set(tags["scalars"]) and "sample" in tags["audio"]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_failed_sample_never_stops_the_run(synth_manifest, tiny_model, tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(listening, "generate_speech", broken)  # where the run's sampling calls it
    args = train_args(
        synth_manifest,
        tmp_path / "run",
        tiny_model,
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--sample_steps",
        "1",
        "--sample_text",
        "hi",
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning: sample at step 1 failed (RuntimeError: decoder exploded); training goes on" in result.output
    assert (tmp_path / "run" / "checkpoint-1").is_dir() and (tmp_path / "run" / "checkpoint-2").is_dir()


def test_sampling_leaves_the_random_stream_alone(tiny_model):
    base = load_base(str(tiny_model))
    torch.manual_seed(5)
    before = torch.get_rng_state().clone()
    generate_module.generate_speech(base.model, base.processor, "hi", max_new_frames=5)
    assert torch.equal(torch.get_rng_state(), before)


def test_merge_loads_with_from_pretrained_and_matches_the_adapter(trained, tiny_model, tmp_path):
    from peft import PeftModel

    out, _ = trained
    merged = tmp_path / "merged"
    result = runner.invoke(
        app, ["merge", "--model", str(tiny_model), "--adapter", str(out / "checkpoint-4"), "--output", str(merged)]
    )
    assert result.exit_code == 0, result.output
    assert "max logit difference vs base + adapter" in result.output
    assert list(merged.glob("*.safetensors")) and (merged / "audio_tokenizer").is_dir()
    reloaded = load_base(str(merged))  # model, processor and audio tokenizer through from_pretrained
    adapter = PeftModel.from_pretrained(load_base(str(tiny_model)).model, str(out / "checkpoint-4")).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.model.eval()(input_ids=ids).logits, adapter(input_ids=ids).logits, rtol=1e-5, atol=1e-5
        )
    # what a serving engine reads: exactly the tensor names a fresh from_pretrained save holds (no peft prefixes,
    # no LoRA remnants), and the generation config
    fresh = tmp_path / "fresh"
    load_base(str(tiny_model)).model.save_pretrained(fresh)
    assert set(tensor_names(merged)) == set(tensor_names(fresh))
    assert (merged / "generation_config.json").is_file()


def test_plot_writes_a_png(trained):
    out, _ = trained
    result = runner.invoke(app, ["plot", str(out)])
    assert result.exit_code == 0
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = runner.invoke(app, ["plot", str(out / "nope")])
    assert bad.exit_code == 2 and "no metrics.jsonl; pass the --output_dir of a run" in bad.output


def test_doctor_lines(tiny_model, tmp_path):
    result = runner.invoke(app, ["doctor", "--output_dir", str(tmp_path), "--model", str(tiny_model)])
    lines = result.output.splitlines()
    assert any(line.startswith("ok   torch: 2.11") for line in lines)
    assert f"ok   output dir: {tmp_path} is writable" in lines
    assert f"ok   audio tokenizer: local folder {tiny_model}/audio_tokenizer" in lines
    missing = runner.invoke(app, ["doctor", "--model", "eustlb/higgs-audio-v2-generation-3B-base"])
    assert missing.exit_code == 1
    assert "FIX  model: eustlb/higgs-audio-v2-generation-3B-base not in the local cache" in missing.output


def test_metrics_have_lr_of_the_step(trained):
    out, _ = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    peak = json.loads((out / "config.json").read_text())["lr"]
    assert lrs[0] == pytest.approx(peak) and np.all(np.diff(lrs) < 0)
