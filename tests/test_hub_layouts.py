"""The hub as it is: a run pins the commits it resolved and resumes on them; a repository that moved is named;
folders caught between the two layouts are found before anything loads, with the command that fixes them.

A local hub cache (HF_HUB_CACHE, offline) holds the tiny model and its audio tokenizer as two repositories, as
Boson's are named, with their branches pointing at commits the tests choose.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from higgs_train.cli import app
from higgs_train.config import BASE_MODEL
from higgs_train.errors import ModelError
from higgs_train.files import read_json
from higgs_train.model import load_audio_tokenizer, load_lm_config
from tests.conftest import runner, train_args

TOKENIZER = "bosonai/higgs-audio-v2-tokenizer"
A, B, T = "a" * 40, "b" * 40, "c" * 40


def publish(cache: Path, repo: str, folder: Path, commit: str) -> None:
    """`folder` as `repo` at `commit` in the hub cache, the main branch moved to it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_model):
    """A hub cache with BASE_MODEL at commit A (its processor naming TOKENIZER, at commit T)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    lm = tmp_path / "lm"
    shutil.copytree(tiny_model, lm, ignore=shutil.ignore_patterns("audio_tokenizer"))
    config = json.loads((lm / "processor_config.json").read_text())
    config["audio_tokenizer"] = {
        "audio_tokenizer_class": "HiggsAudioV2TokenizerModel",
        "audio_tokenizer_name_or_path": TOKENIZER,
    }
    (lm / "processor_config.json").write_text(json.dumps(config))
    publish(cache, BASE_MODEL, lm, A)
    publish(cache, TOKENIZER, tiny_model / "audio_tokenizer", T)
    return cache, lm


def test_a_run_pins_its_commits_and_a_resume_stays_on_them(hub, synth_manifest, tiny_model, tmp_path):
    from higgs_train.tiny import build_tiny_model

    cache, lm = hub
    run = tmp_path / "run"
    args = [*train_args(synth_manifest, run, BASE_MODEL, "--save_steps", "1"), "--max_steps", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"{BASE_MODEL}: the default branch is commit {A} (recorded: --model_revision)" in result.output
    for config in (read_json(run / "config.json"), read_json(run / "checkpoint-1" / "trainer_state.json")["config"]):
        assert (config["model_revision"], config["audio_tokenizer_revision"]) == (A, T)
    # the repository moves on: main now holds other weights
    other = build_tiny_model(tmp_path / "other", seed=1)
    shutil.copytree(other, tmp_path / "other-lm", ignore=shutil.ignore_patterns("audio_tokenizer"))
    shutil.copy(lm / "processor_config.json", tmp_path / "other-lm" / "processor_config.json")
    publish(cache, BASE_MODEL, tmp_path / "other-lm", B)
    again = runner.invoke(app, [*args[:-1], "2"])  # the same command: resumes on commit A
    assert again.exit_code == 0, again.output
    assert f"resumed from {run / 'checkpoint-1'}" in again.output
    assert read_json(run / "checkpoint-2" / "trainer_state.json")["config"]["model_revision"] == A
    # generate, merge and score load a checkpoint's base at the commit its run recorded, not the moved branch
    from higgs_train.generate import load_with_adapter
    from higgs_train.model import load_lm

    with_adapter, _ = load_with_adapter(BASE_MODEL, str(run / "checkpoint-2"))
    at_a = load_lm(str(cache / f"models--{BASE_MODEL.replace('/', '--')}" / "snapshots" / A))
    embed = with_adapter.get_base_model().model.embed_tokens.weight
    assert torch.equal(embed, at_a.model.embed_tokens.weight)
    moved = runner.invoke(app, [*args[:-1], "3", "--model_revision", "main"])
    assert moved.exit_code == 3
    assert f"the repository changed since this run started: --model {BASE_MODEL} was commit {A}, now commit {B}" in (
        moved.output
    )
    assert f"pass --model_revision {A} to resume on the weights it was trained on" in moved.output
    missing = runner.invoke(app, [*args[:-1], "3", "--model_revision", "d" * 40])
    assert missing.exit_code == 2 and f"--model {BASE_MODEL} at --model_revision {'d' * 40}: cannot read" in (
        missing.output
    )


def test_a_tokenizer_folder_with_a_transformers_config_beside_model_pth_is_found_and_converted(tiny_model, tmp_path):
    from higgs_train.tiny import _original_codec_state

    folder = tmp_path / "higgs-audio-v2-tokenizer"
    shutil.copytree(tiny_model / "audio_tokenizer", folder)
    native = load_audio_tokenizer("unused", str(folder))
    torch.save(_original_codec_state(native.state_dict()), folder / "model.pth")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelError) as e:
        load_audio_tokenizer("unused", str(folder))
    out = "higgs-audio-v2-tokenizer-hf"
    assert str(e.value) == (
        f"--audio_tokenizer {folder} has a transformers config.json but its weights are still Boson's model.pth (a "
        "repository between the two layouts), which transformers cannot load; convert it once with "
        f"`higgs-train convert {folder} {out}` and pass --audio_tokenizer {out}"
    )
    result = runner.invoke(app, ["convert", str(folder), str(tmp_path / out)])  # the config beside it is complete
    assert result.exit_code == 0, result.output
    converted = load_audio_tokenizer("unused", str(tmp_path / out))
    wave = torch.randn(1, 1, 24000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        assert torch.equal(native.encode(wave).audio_codes, converted.encode(wave).audio_codes)


def test_an_lm_folder_mixing_two_revisions_is_refused_before_the_weights_load(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "mixed"
    shutil.copytree(tiny_model, folder)
    state = load_file(str(folder / "model.safetensors"))
    save_file({k.removeprefix("model."): v for k, v in state.items()}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="the folder mixes two revisions of the repository; download it again"):
        load_lm_config(str(folder))
