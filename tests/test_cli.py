"""CLI parsing, help and bad input: exit codes and the exact messages users see."""

import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf

import higgs_train.train as train_module
from higgs_train.cli import app
from tests.conftest import runner, train_args


def test_help_subprocess_shows_groups_and_both_spellings():
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "higgs_train", "--help"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0
    for text in ("Data", "LoRA", "Optimisation", "Checkpoints", "--train_manifest", "--train-manifest", "init-tiny"):
        assert text in result.stdout
    assert "Dropout on the LoRA input." in result.stdout
    assert "[default: --save_steps when there is an eval set]" in result.stdout  # text in brackets is not markup


def test_flags_yaml_and_overrides_reach_the_config(tmp_path, monkeypatch):
    seen = {}

    def fake_train(cfg, log, progress_bar=True):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(train_module, "train", fake_train)
    preset = tmp_path / "p.yaml"
    preset.write_text("lora_r: 4\nlr: 0.5\nmixed_precision: bf16\n")
    args = [
        "--config",
        str(preset),
        "--train_manifest",
        "m.jsonl",
        "--output-dir",
        "o",
        "--lr",
        "0.25",
        "--lora-targets",
        "q_proj,v_proj",
        "--gradient_checkpointing",
        "--num_epochs",
        "2.5",
    ]
    runner.invoke(app, args)
    cfg = seen["cfg"]
    assert (cfg.lora_r, cfg.lr, cfg.mixed_precision, cfg.output_dir) == (4, 0.25, "bf16", "o")
    assert (cfg.lora_targets, cfg.gradient_checkpointing, cfg.num_epochs) == ("q_proj,v_proj", True, 2.5)


def test_missing_manifest(tmp_path, tiny_model):
    result = runner.invoke(app, train_args(tmp_path / "none.jsonl", tmp_path / "out", tiny_model))
    assert result.exit_code == 2
    assert f"error: {tmp_path}/none.jsonl: manifest not found; pass an existing .jsonl or .json file" in result.output
    assert "Traceback" not in result.output


def test_unwritable_output_dir_fails_before_model_load(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "x"}\n')
    result = runner.invoke(app, train_args(manifest, blocker / "out", tmp_path / "no-model"))
    assert result.exit_code == 2
    assert f"error: --output_dir {blocker}/out: cannot write there (Not a directory); choose a folder you can" in (
        result.output.replace("\n", " ")
    )


def test_missing_and_undecodable_audio_name_the_line(tmp_path, tiny_model):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage" * 100)
    good = tmp_path / "good.wav"
    sf.write(good, np.zeros(2400, dtype=np.float32) + 0.1, 24000)
    manifest = tmp_path / "m.jsonl"
    for rows, expected in (
        ([{"audio": "good.wav", "text": "a"}, {"audio": "gone.wav", "text": "b"}], "m.jsonl:2: audio file"),
        ([{"audio": "bad.wav", "text": "a"}], "m.jsonl:1: cannot decode audio file"),
    ):
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        result = runner.invoke(app, train_args(manifest, tmp_path / "out", tiny_model, "--max_steps", "1"))
        assert result.exit_code == 2, result.output
        assert expected in result.output.replace("\n", "")
        assert "Traceback" not in result.output
