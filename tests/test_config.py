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
        "--mixed_precision must be one of no, bf16, fp16, got 'fp8'; "  # in the fields' order (their rules)
        "--lora_r must be at least 1, got 0"
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
    assert build_config({"train_manifest": "m.jsonl", "output_dir": "o", "resume": str(tmp_path)}).resume == str(
        tmp_path
    )


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("batch_size", 0, "--batch_size must be at least 1 or auto, got 0"),  # 0 never means auto
        ("stop_save_s", -1, "--stop_save_s must be 0 (wait for the full save) or more seconds, got -1"),
        ("dist_timeout_s", 0, "--dist_timeout_s must be at least 1 second, got 0"),
    ],
)
def test_values_out_of_range_are_refused(flag, value, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        build_config({"train_manifest": "m.jsonl", "output_dir": "o", flag: value})


def test_batch_size_auto_is_a_word_not_a_number():
    from higgs_train.config import AUTO

    assert build_config({"train_manifest": "m.jsonl", "output_dir": "o", "batch_size": "auto"}).batch_size == AUTO
    assert AUTO == "auto"


def test_deepspeeds_cpu_fallback_note_is_not_printed():
    import logging

    import higgs_train  # noqa: F401 - installs the filter

    note = logging.LogRecord(
        "DeepSpeed", logging.WARNING, "x", 1, "Setting accelerator to CPU. If you have", None, None
    )
    other = logging.LogRecord("DeepSpeed", logging.WARNING, "x", 1, "something else", None, None)
    logger = logging.getLogger("DeepSpeed")
    assert not logger.filter(note) and logger.filter(other)


def test_rules_are_declared_on_the_fields_and_derived_from_them():
    """Choices, minimums and what a resume may change live on each field (config._f); validation and the resume's
    lists come from there."""
    from dataclasses import fields

    from higgs_train.checkpoint.resume import SHAPING_FIELDS, changed_settings
    from higgs_train.config import MAY_CHANGE, TrainConfig, fields_where

    for f in fields(TrainConfig):
        if "choices" in f.metadata:
            assert f.default in f.metadata["choices"], f.name  # every default is one of its own choices
    assert set(SHAPING_FIELDS) == {"lora_r", "lora_targets", "quantize"}
    saved = {"max_steps": 10, "lr": 1e-4, "shuffle_buffer": 1000}
    assert "max_steps" in fields_where("resume", MAY_CHANGE)
    assert changed_settings(saved, {"max_steps": 20, "lr": 2e-4, "shuffle_buffer": 1000}) == [
        "--lr: checkpoint has 0.0001, this run uses 0.0002"
    ]
    with pytest.raises(ConfigError, match="--shuffle_buffer must be at least 1, got 0"):
        build_config({"shuffle_buffer": 0}, require_data=False)
