"""prepare: every bad-input case in the report, real audio in every format, the cache encodes each clip once."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from higgs_train.cli import app
from higgs_train.data.codes import CodeCache
from higgs_train.data.prepare import DataLimits, TextCounts, prepare_data
from higgs_train.errors import ConfigError
from tests.conftest import runner, train_args

LIMITS = DataLimits(min_duration=0.2, max_duration=5.0, max_text_tokens=40)


def count_chars(text):
    return len(text)


def write_manifest(folder, rows):
    path = folder / "m.jsonl"
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


def test_real_audio_every_format_channel_count_and_rate(voices, base, tmp_path):
    wave, rate = sf.read(voices / "en_woman.wav", dtype="float32")
    wave = wave[: rate * 2]
    rows = []
    for i, (fmt, ext, out_rate, stereo) in enumerate(
        [
            ("WAV", "wav", 8000, False),
            ("FLAC", "flac", 16000, True),
            ("OGG", "ogg", 44100, False),
            ("MP3", "mp3", 48000, True),
            ("WAV", "wav", 22050, True),
        ]
    ):
        import torch
        import torchaudio.functional as AF

        resampled = AF.resample(torch.from_numpy(wave), rate, out_rate).numpy()
        data = np.stack([resampled, resampled * 0.5], 1) if stereo else resampled
        name = f"c{i}.{ext}"
        sf.write(tmp_path / name, data, out_rate, format=fmt)
        rows.append({"audio": name, "text": f"clip {i}"})
    data = prepare_data(
        write_manifest(tmp_path, rows), tmp_path / "out", base.audio_tokenizer, TextCounts(count_chars), LIMITS
    )
    assert data.report.good == 5 and not data.report.problems
    for s in data.samples:
        clip = data.clips[s.target_audio]
        assert abs(clip.seconds - 2.0) < 0.1  # decoders may pad a frame
        assert clip.codes.shape[0] == 8 and abs(clip.codes.shape[1] - 50) <= 2  # 25 frames/s


def test_each_bad_input_is_reported_with_file_and_line(base, tmp_path):
    rate = 16000
    sf.write(tmp_path / "ok.wav", np.full(rate, 0.1, dtype=np.float32), rate)
    sf.write(tmp_path / "short.wav", np.full(rate // 10, 0.1, dtype=np.float32), rate)
    sf.write(tmp_path / "long.wav", np.full(rate * 6, 0.1, dtype=np.float32), rate)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), rate)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 20)
    rows = [
        {"audio": "ok.wav", "text": "fine"},
        "{broken json\n",
        {"audio": "ok.wav"},
        {"audio": "ok.wav", "text": ""},
        {"audio": "gone.wav", "text": "x"},
        {"audio": "junk.wav", "text": "x"},
        {"audio": "empty.wav", "text": "x"},
        {"audio": "short.wav", "text": "x"},
        {"audio": "long.wav", "text": "x"},
        {"audio": "ok.wav", "text": "y" * 41},
    ]
    manifest = write_manifest(tmp_path, rows)
    data = prepare_data(manifest, tmp_path / "out", base.audio_tokenizer, TextCounts(count_chars), LIMITS)
    report = data.report
    assert (report.rows, report.good) == (10, 1)
    assert report.counts() == {
        r: 1
        for r in (
            "invalid JSON",
            "missing field",
            "empty text",
            "missing audio",
            "undecodable audio",
            "empty audio",
            "too short",
            "too long",
            "text too long",
        )
    }
    where = {p.reason: p.where for p in report.problems}
    assert where["invalid JSON"] == f"{manifest}:2" and where["text too long"] == f"{manifest}:10"
    messages = {p.reason: p.message for p in report.problems}
    assert messages["too long"] == f"{manifest}:9: clip is 6.00s, over --max_duration 5.0s; split it"
    assert messages["missing audio"].startswith(f"{manifest}:5: audio file {tmp_path}/gone.wav not found")
    saved = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert saved["counts"]["too short"] == 1 and len(saved["problems"]) == 9


def test_on_bad_sample_error_then_skip(synth_manifest, tiny_model, tmp_path):
    rows = synth_manifest.read_text().splitlines() + ['{"audio_filepath": "clips/clip_0.wav", "text": ""}']
    manifest = synth_manifest.parent / "with_bad.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    args = train_args(manifest, tmp_path / "run", tiny_model, "--max_steps", "1")
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert (
        f'error: 1 of 7 rows cannot be trained on (1 empty text); first: {manifest}:7: field "text" is empty; '
        "give the transcript of the clip. Fix them, or pass --on_bad_sample skip"
    ) in refused.output
    assert not list((tmp_path / "run").glob("checkpoint-*"))
    skipped = runner.invoke(app, [*args, "--on_bad_sample", "skip"])
    assert skipped.exit_code == 0, skipped.output
    assert "warning: skipping 1 of 7 rows" in skipped.output and "(1 empty text)" in skipped.output


def test_cache_encodes_once_and_only_what_changed(synth_manifest, base, tmp_path):
    totals = []

    def progress(done, total, seconds):
        totals.append(total)

    out = tmp_path / "out"
    prepare_data(synth_manifest, out, base.audio_tokenizer, TextCounts(count_chars), DataLimits(), progress=progress)
    assert totals[-1] == 6
    totals.clear()
    prepare_data(synth_manifest, out, base.audio_tokenizer, TextCounts(count_chars), DataLimits(), progress=progress)
    assert totals == []  # nothing re-encoded
    clip = synth_manifest.parent / "clips" / "clip_3.wav"
    data, rate = sf.read(clip, dtype="float32")
    sf.write(clip, data * 0.5, rate)
    prepare_data(synth_manifest, out, base.audio_tokenizer, TextCounts(count_chars), DataLimits(), progress=progress)
    assert totals[-1] == 1  # only the changed clip


@pytest.mark.slow
def test_prepare_killed_mid_way_resumes_from_finished_shards(tiny_model, tmp_path):
    from higgs_train.tiny import make_dataset

    manifest = make_dataset(tmp_path / "data")
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join(rows * 2) + "\n")  # 12 rows, 6 distinct clips
    out = tmp_path / "out"
    env = {**os.environ, "HIGGS_TRAIN_FAILPOINT": "after_shard@2"}
    cmd = [
        sys.executable,
        "-m",
        "higgs_train",
        "prepare",
        "--train_manifest",
        str(manifest),
        "--output_dir",
        str(out),
        "--model",
        str(tiny_model),
        "--cache_shard_clips",
        "2",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert len(CodeCache(out).shards()) == 2
    result = runner.invoke(app, ["prepare", *cmd[4:]])
    assert result.exit_code == 0, result.output
    assert "12 rows, 12 usable" in result.output
    assert len(CodeCache(out).shards()) == 3  # the last 2 clips only


def test_eval_fraction_logs_eval_loss(synth_manifest, tiny_model, tmp_path):
    args = train_args(
        synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "4", "--save_steps", "2", "--eval_fraction", "0.4"
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]
    assert all("padding_share" in r and "data_s" in r for r in rows if "loss" in r)


def test_eval_manifest_and_prepare_command(synth_manifest, tiny_model, tmp_path):
    result = runner.invoke(app, ["prepare", *train_args(synth_manifest, tmp_path / "run", tiny_model)])
    assert result.exit_code == 0, result.output
    assert f"{synth_manifest}: 6 rows, 6 usable" in result.output
    args = train_args(
        synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "2", "--eval_manifest", str(synth_manifest)
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "step 2: eval loss" in result.output


def test_bad_eval_settings():
    from higgs_train.config import build_config

    with pytest.raises(ConfigError, match="--eval_manifest and --eval_fraction both given"):
        build_config({"train_manifest": "m", "output_dir": "o", "eval_manifest": "e", "eval_fraction": 0.1})
