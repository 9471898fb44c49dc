"""`higgs-train export`: the adapter leaves the run with a hub model card and its samples; the upload is one
huggingface_hub call (tested up to it: no network here)."""

import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from higgs_train.cli import app
from higgs_train.files import sha256_file
from tests.conftest import load_base, runner

ADAPTER = ("adapter_model.safetensors", "adapter_config.json")


@pytest.fixture(scope="module")
def exported(listened_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "voice-adapter"
    result = runner.invoke(app, ["export", str(listened_run), str(out), "--language", "en"])
    assert result.exit_code == 0, result.output
    return out


def test_export_takes_the_best_checkpoint_with_a_hub_card_and_its_samples(listened_run, exported):
    best = listened_run / (listened_run / "best").read_text().strip()
    for name in ADAPTER:
        assert sha256_file(exported / name) == sha256_file(best / name)
    card = (exported / "README.md").read_text()
    _, meta, body = card.split("---\n", 2)
    meta = yaml.safe_load(meta)
    assert meta["library_name"] == "peft" and meta["language"] == ["en"] and "text-to-speech" in meta["tags"]
    assert (meta["license"], meta["license_name"]) == ("other", "boson-higgs-audio-2-community-license")
    assert "base_model" not in meta  # a local folder is not a hub id: named in the text only
    step = best.name.split("-")[1]
    assert f"checkpoint `{best.name}`" in body and f"- steps: {step} " in body
    assert "r=16, alpha=32" in body and "- eval loss at this step: " in body and "WER 1.000" in body
    assert "PeftModel.from_pretrained(base" in body and "higgs-train generate --model" in body
    assert "bound by that model's license" in body
    clips = sorted(p.name for p in (exported / "samples").iterdir())
    assert clips == ["scored-item-0.wav", "scored-item-1.wav", f"step-{step}.wav"]
    assert all(f"(samples/{c})" in body for c in clips)


def test_the_exported_adapter_loads_with_peft(exported, tiny_model):
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(tiny_model).model, str(exported))
    saved = load_file(str(exported / "adapter_model.safetensors"))
    name = next(iter(saved))
    loaded = dict(model.named_parameters())[name.replace(".weight", ".default.weight")]
    assert torch.equal(loaded.detach(), saved[name])


def test_push_to_hub_uploads_the_folder_and_a_failed_upload_keeps_it(listened_run, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    out = tmp_path / "up"
    result = runner.invoke(app, ["export", str(listened_run), str(out), "--push_to_hub", "me/voice", "--private"])
    assert result.exit_code == 0, result.output
    assert calls[0] == ("create", "me/voice", {"private": True, "exist_ok": True})
    assert calls[1][1]["folder_path"] == str(out) and calls[1][1]["repo_id"] == "me/voice"

    def offline(self, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(HfApi, "upload_folder", offline)
    result = runner.invoke(app, ["export", str(listened_run), str(tmp_path / "again"), "--push_to_hub", "me/voice"])
    assert result.exit_code == 2
    assert "upload to me/voice failed (ConnectionError: no network);" in result.output
    assert (tmp_path / "again" / "README.md").is_file()


def test_export_refuses_a_run_without_checkpoints_and_a_folder_in_use(listened_run, tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["export", str(tmp_path / "empty"), str(tmp_path / "out")])
    assert result.exit_code == 3 and "no valid checkpoint to export" in result.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["export", str(listened_run), str(tmp_path / "busy")])
    assert result.exit_code == 2 and "exists and is not empty; export into a new folder" in result.output
    shutil.rmtree(tmp_path / "busy")


@pytest.mark.parametrize("language", ["en\nlicense: mit", "en: {pwned: 1}", "[en"])
def test_a_hostile_language_is_refused_before_anything_is_written(listened_run, tmp_path, language):
    result = runner.invoke(app, ["export", str(listened_run), str(tmp_path / "out"), "--language", language])
    assert result.exit_code == 2 and "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_the_card_parses_to_exactly_its_keys_whatever_the_values(listened_run, tmp_path):
    from higgs_train.checkpoint.resume import read_trainer_state
    from higgs_train.export import model_card

    best = listened_run / (listened_run / "best").read_text().strip()
    state = read_trainer_state(best)
    state["config"]["model"] = "me/base\n---\nlicense: mit"
    run = tmp_path / "run\n---\npwned: 1"
    shutil.copytree(listened_run, run)
    clips = [{"file": "samples/a.wav", "text": "hello\n---\nlicense: mit\n---"}]
    card = model_card(run, best, state, clips, ["en", "en: {pwned: 1}", "[en", "fr"])
    _, meta, body = card.split("---\n", 2)
    assert set(yaml.safe_load(meta)) == {"library_name", "pipeline_tag", "license", "license_name", "tags", "language"}
    assert yaml.safe_load(meta)["license"] == "other" and yaml.safe_load(meta)["language"] == ["en", "fr"]
    assert not [line for line in body.splitlines() if line.strip().startswith("---")]  # no new front matter
    assert "license: mit" not in meta and "pwned" not in meta
