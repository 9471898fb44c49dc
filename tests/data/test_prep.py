"""prep on real recordings, the LJSpeech / CSV / .lab formats, and the dataset statistics."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from higgs_train.cli import app
from higgs_train.data.manifest import load_manifest
from higgs_train.data.prep import prep, segments
from higgs_train.data.prepare import stats_warnings
from higgs_train.settings import PrepSettings
from tests.conftest import runner

SPEAKERS = ["en_man", "en_woman", "belinda"]


def voice(voices, name, rate=24000):
    wave, r = sf.read(voices / f"{name}.wav", dtype="float32")
    wave = wave.mean(1) if wave.ndim > 1 else wave
    return AF.resample(torch.from_numpy(wave), r, rate).numpy()


@pytest.fixture(scope="module")
def long_recording(voices, tmp_path_factory):
    """Three real clips joined with 1 s pauses, at a low level, into one long recording."""
    raw = tmp_path_factory.mktemp("raw")
    parts = [np.zeros(24000, dtype=np.float32)]
    for name in SPEAKERS:
        parts += [0.3 * voice(voices, name), np.zeros(24000, dtype=np.float32)]
    sf.write(raw / "long.wav", np.concatenate(parts), 24000)
    return raw


def test_long_recording_split_back_trimmed_and_normalised(long_recording, voices, tmp_path):

    entries = prep(long_recording, tmp_path, PrepSettings(max_duration=15.0), say=lambda m: None)
    assert len(entries) == 3  # split at the pauses, one clip per original
    for entry, name in zip(entries, SPEAKERS, strict=True):
        original = len(voice(voices, name)) / 24000
        assert abs(entry.seconds - original) < 0.8, (name, entry.seconds, original)  # trimmed, not cut into
        assert entry.dropped == "no transcript: pass --transcribe"
    report = json.loads((tmp_path / "prep_report.json").read_text())
    assert report["kept"] == 0 and report["dropped"] == 3


def test_transcripts_kept_loudness_normalised(voices, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("mabel", "vex"):
        sf.write(raw / f"{name}.wav", 0.2 * voice(voices, name), 24000)
        (raw / f"{name}.lab").write_text((voices / f"{name}.txt").read_text())
    entries = prep(raw, tmp_path / "out", PrepSettings(max_duration=30.0, loudness_lufs=-20.0), say=lambda m: None)
    assert [e.dropped for e in entries] == [None, None]
    meter = pyloudnorm_meter()
    for e in entries:
        data, rate = sf.read(tmp_path / "out" / e.clip)
        assert rate == 24000 and abs(meter(rate).integrated_loudness(data) + 20.0) < 1.0
    rows = load_manifest(tmp_path / "out" / "train.jsonl")
    assert [r.turns[-2].text for r in rows] == [(voices / f"{n}.txt").read_text().strip() for n in ("mabel", "vex")]


def pyloudnorm_meter():
    import pyloudnorm

    return pyloudnorm.Meter


def test_every_rejection_has_a_reason(voices, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    speech = voice(voices, "en_man")
    sf.write(raw / "short.wav", speech[24000 : 24000 + int(0.6 * 24000)], 24000)
    (raw / "short.txt").write_text("hi")
    sf.write(raw / "silent.wav", np.zeros(48000, dtype=np.float32), 24000)
    (raw / "broken.wav").write_bytes(b"not audio" * 50)
    loud = np.clip(speech * 20, -1, 1)
    sf.write(raw / "loud.wav", loud, 24000)
    (raw / "loud.txt").write_text((voices / "en_man.txt").read_text())
    for i, name in enumerate(["belinda", "chadwick", "en_woman", "mabel"]):
        sf.write(raw / f"ok{i}.wav", voice(voices, name), 24000)
        (raw / f"ok{i}.txt").write_text((voices / f"{name}.txt").read_text())
    sf.write(raw / "fast.wav", voice(voices, "vex"), 24000)
    (raw / "fast.txt").write_text((voices / "vex.txt").read_text() * 6)  # transcript far too long for the audio
    entries = {
        e.source.split("/")[-1]: e
        for e in prep(raw, tmp_path / "out", PrepSettings(max_duration=30.0), say=lambda m: None)
    }
    assert entries["short.wav"].dropped.startswith("duration 0.")
    assert entries["silent.wav"].dropped == "near-silent: no speech found"
    assert entries["broken.wav"].dropped.startswith("undecodable audio:")
    assert any(f.startswith("clipped:") for f in entries["loud.wav"].flags)
    assert any(f.startswith("speaking rate") for f in entries["fast.wav"].flags)
    assert all(not entries[f"ok{i}.wav"].dropped for i in range(4))
    report = json.loads((tmp_path / "out" / "prep_report.json").read_text())
    listed = {e["source"].split("/")[-1] for e in report["entries"] if e["dropped"] or e["flags"]}
    assert {"short.wav", "silent.wav", "broken.wav", "loud.wav", "fast.wav"} <= listed


def test_segments_cut_at_sentence_breaks_and_to_stay_short():
    spans = [(0.0, 3.0), (3.1, 6.0), (7.0, 9.0), (9.5, 14.0)]
    assert segments(spans, 100.0, 0.3) == [(0.0, 6.0), (7.0, 14.0)]  # the 1 s pause always cuts; 0.1 s never
    assert segments(spans, 6.0, 0.3) == [(0.0, 6.0), (7.0, 9.0), (9.5, 14.0)]  # 0.5 s pause cut to stay short


def test_ljspeech_csv_and_lab_formats(tmp_path):
    rate = 16000
    tone = (0.2 * np.sin(np.linspace(0, 500, rate))).astype(np.float32)
    lj = tmp_path / "lj"
    (lj / "wavs").mkdir(parents=True)
    for i in range(2):
        sf.write(lj / "wavs" / f"LJ001-{i}.wav", tone, rate)
    (lj / "metadata.csv").write_text("LJ001-0|Mr. Smith's 2 cats|Mister Smith's two cats\nLJ001-1|plain text\n")
    first, second = load_manifest(lj)
    assert first.turns[-2].text == "Mister Smith's two cats" and second.turns[-2].text == "plain text"
    assert first.target_audio == str(lj / "wavs" / "LJ001-0.wav")

    csv = tmp_path / "list.csv"
    csv.write_text("audio_file|text\nlj/wavs/LJ001-0.wav|hello there\n")
    (row,) = load_manifest(csv)
    assert row.target_audio == str(lj / "wavs" / "LJ001-0.wav") and row.source == f"{csv}:2"

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    sf.write(pairs / "a.wav", tone, rate)
    (pairs / "a.lab").write_text("from a lab file")
    sf.write(pairs / "b.wav", tone, rate)
    problems = []
    (sample,) = load_manifest(pairs, problems)
    assert sample.turns[-2].text == "from a lab file"
    assert problems[0].message == f"{pairs}/b.wav: no b.txt or b.lab beside it; add the transcript"
    assert len(load_manifest(lj, fmt="ljspeech")) == 2


def test_format_flag_reaches_the_run(tmp_path, tiny_model, synth_manifest):
    csv = synth_manifest.parent / "list.psv"
    rows = [json.loads(line) for line in synth_manifest.read_text().splitlines()]
    csv.write_text("".join(f"{r['audio_filepath']}|{r['text']}\n" for r in rows))
    result = runner.invoke(
        app,
        [
            "prepare",
            "--train_manifest",
            str(csv),
            "--output_dir",
            str(tmp_path / "o"),
            "--model",
            str(tiny_model),
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "6 rows, 6 usable" in result.output and "data: " in result.output


def test_stats_warnings():
    stats = {
        "hours": 0.05,
        "clips": 10,
        "speakers": {"a": 9, "b": 1},
        "duration_s": {"min": 1.0, "median": 2.0, "max": 30.0},
    }
    warnings = stats_warnings(stats, samples_per_step=8, steps=1000)
    assert warnings[0] == "only 3.0 minutes of audio: a voice fine-tune usually wants 30 minutes or more"
    assert "show each clip about 800 times: expect overfitting" in warnings[1]
    assert warnings[2] == "speaker a has 9 of 10 clips: the others may barely be learnt"
    assert warnings[3] == "clip lengths are very uneven (1.0-30.0 s, median 2.0 s)"


def test_transcribe_runs_the_asr_on_each_split_clip(long_recording, tmp_path):
    from higgs_train.tiny import build_tiny_whisper

    whisper = build_tiny_whisper(tmp_path / "whisper")
    result = runner.invoke(
        app,
        [
            "prep",
            str(long_recording),
            "--output_dir",
            str(tmp_path / "out"),
            "--max_duration",
            "15",
            "--transcribe",
            "--asr_model",
            str(whisper),
        ],
    )
    assert result.exit_code == 0, result.output
    entries = json.loads((tmp_path / "out" / "prep_report.json").read_text())["entries"]
    assert len(entries) == 3
    # random weights: each clip either got (noise) words or is dropped saying the ASR found none
    assert all(e["text"] or e["dropped"] == "ASR found no words" for e in entries)
