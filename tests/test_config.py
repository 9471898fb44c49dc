import pytest

from higgs_train.config import build_config
from higgs_train.errors import ConfigError


def test_yaml_then_flags_win(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lora-r: 4\nlr: 0.01\nsave_steps: 7\n")
    cfg = build_config({"train_manifest": "m", "output_dir": "o", "lr": 0.5, "save_steps": None}, str(preset))
    assert (cfg.lora_r, cfg.lr, cfg.save_steps) == (4, 0.5, 7)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        build_config({"lora_r": 0, "mixed_precision": "fp8"})
    assert str(info.value) == (
        "--train_manifest is required: the JSONL manifest of clips to train on; "
        "--output_dir is required: the folder for checkpoints and logs; "
        "--lora_r must be at least 1, got 0; "
        "--mixed_precision must be one of no, bf16, fp16, got 'fp8'"
    )


def test_unknown_yaml_key(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lora_rank: 4\n")
    with pytest.raises(ConfigError, match="unknown option 'lora_rank'; see `higgs-train --help` for the names"):
        build_config({}, str(preset))


def test_presets_in_configs_are_valid():
    from pathlib import Path

    presets = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert presets
    for preset in presets:
        build_config({"train_manifest": "m", "output_dir": "o"}, str(preset))


def test_resume_must_be_a_mode_or_a_folder(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_config({"train_manifest": "m.jsonl", "output_dir": "o", "resume": "autoo"})
    assert str(e.value) == "--resume 'autoo' is neither auto nor never nor a checkpoint folder; pass one of them"
    assert build_config({"train_manifest": "m.jsonl", "output_dir": "o", "resume": str(tmp_path)}).resume
