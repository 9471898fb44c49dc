"""Scoring checkpoints by listening: each measure on real audio or hand-made tables, then in and after a run."""

import json
import shutil

import numpy as np
import pytest
import torch

from higgs_train.cli import app
from higgs_train.data.audio import load_audio
from higgs_train.scoring.best import ScoreRow, badness, best_row
from higgs_train.scoring.stopping import duration_ratio, trailing_share
from higgs_train.scoring.text import error_rates, normalise
from tests.conftest import runner, train_args


def test_wer_cer_on_normalised_text():
    assert normalise("  Hello, WORLD!  ") == "hello world"
    assert error_rates("Hello, world!", "hello world") == (0.0, 0.0, "wer")
    wer, cer, _ = error_rates("the cat sat on the mat", "the cat sat on a mat")
    assert wer == pytest.approx(1 / 6) and 0 < cer < wer
    assert error_rates("some words", "") == (1.0, 1.0, "wer")


def test_speaker_similarity_same_voice_beats_other_voices(voices):
    from higgs_train.scoring.speaker import embed, similarity

    def halves(name):
        wave = load_audio(str(voices / f"{name}.wav"), 16000)
        mid = len(wave) // 2
        return embed(wave[:mid], 16000), embed(wave[mid:], 16000)

    man_a, man_b = halves("en_man")
    woman_a, _ = halves("en_woman")
    belinda_a, _ = halves("belinda")
    same = similarity(man_a, man_b)
    assert same > similarity(man_a, woman_a) and same > similarity(man_a, belinda_a)
    assert same > 0.75


def test_trailing_share_tells_noise_tail_from_cut_tail(voices):
    wave = load_audio(str(voices / "en_woman.wav"), 16000)
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.01, 16000 * 3).astype(np.float32))
    with_noise = torch.cat([wave, noise])
    cut = wave[: int(len(wave) * 0.6)]  # stops mid-sentence: speech runs to the very end
    assert trailing_share(with_noise, 16000) > 0.3
    assert trailing_share(cut, 16000) < 0.1
    assert trailing_share(torch.zeros(16000), 16000) == 1.0  # no speech at all


def test_duration_ratio_and_best_selection():
    assert duration_ratio(2.0, "x" * 30, 15.0) == pytest.approx(1.0)
    assert duration_ratio(8.0, "x" * 30, 15.0) == pytest.approx(4.0)  # rambles on
    rows = [
        ScoreRow(100, wer=0.30, cer=0.2, similarity=0.80, duration_ratio=1.0, trailing_share=0.05, eval_loss=3.0),
        ScoreRow(200, wer=0.10, cer=0.1, similarity=0.70, duration_ratio=2.5, trailing_share=0.40, eval_loss=2.9),
        ScoreRow(300, wer=0.20, cer=0.1, similarity=0.85, duration_ratio=1.1, trailing_share=0.05, eval_loss=2.95),
        ScoreRow(400, eval_loss=2.8),  # scored for loss only
    ]
    assert best_row(rows, "wer").step == 200
    assert best_row(rows, "similarity").step == 300
    assert best_row(rows, "loss").step == 400
    assert best_row(rows, "combined").step == 300  # 200 has the best WER but never stops: combined catches it
    assert badness(rows[3], "combined") == float("inf")
    assert best_row([ScoreRow(1)], "wer") is None


def test_tiny_whisper_transcribes_through_the_pipeline(tiny_whisper):
    from higgs_train.scoring.asr import Transcriber

    asr = Transcriber(str(tiny_whisper))
    assert isinstance(asr(torch.randn(24000) * 0.1, 24000), str)  # random weights: the words are noise
    assert asr(torch.zeros(0), 24000) == ""


def test_scoring_in_the_run_marks_best_and_rotation_keeps_it(
    synth_manifest, tiny_model, tiny_whisper, tmp_path, monkeypatch
):
    import higgs_train.scoring.score as score_module

    steps = iter([0.5, 0.9, 0.8])  # step 2 is best by WER, then worse ones

    def fake_score(self, model, items, step, eval_loss=None, keep=None):
        return ScoreRow(
            step, wer=next(steps), cer=0.1, similarity=0.5, duration_ratio=1.0, trailing_share=0.0, eval_loss=eval_loss
        )

    monkeypatch.setattr(score_module.Scorer, "score", fake_score)
    out = tmp_path / "run"
    args = train_args(
        synth_manifest,
        out,
        tiny_model,
        "--max_steps",
        "6",
        "--save_steps",
        "2",
        "--score_steps",
        "2",
        "--eval_fraction",
        "0.34",
        "--asr_model",
        str(tiny_whisper),
        "--select_best_by",
        "wer",
        "--save_total_limit",
        "1",
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "best").read_text() == "checkpoint-2\n"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-6"]  # 4 rotated away
    assert [json.loads(line)["step"] for line in (out / "scores.jsonl").read_text().splitlines()] == [2, 4, 6]
    table = runner.invoke(app, ["checkpoints", str(out)])
    assert "best (*): checkpoint-2" in table.output


def test_failed_scoring_never_stops_the_run(synth_manifest, tiny_model, tiny_whisper, tmp_path, monkeypatch):
    import higgs_train.scoring.score as score_module

    def broken(*a, **kw):
        raise RuntimeError("asr fell over")

    monkeypatch.setattr(score_module.Scorer, "score", broken)
    args = train_args(
        synth_manifest,
        tmp_path / "run",
        tiny_model,
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--score_steps",
        "1",
        "--eval_fraction",
        "0.34",
        "--asr_model",
        str(tiny_whisper),
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning: scoring at step 1 failed (RuntimeError: asr fell over); training goes on" in result.output
    assert (tmp_path / "run" / "checkpoint-2").is_dir()


@pytest.mark.slow
def test_score_command_scores_every_checkpoint(listened_run, tiny_whisper, tmp_path):
    out = tmp_path / "run"  # a copy of the shared run, its own scores taken away
    shutil.copytree(listened_run, out, symlinks=True)
    for name in ("scores.jsonl", "scores.png", "best"):
        (out / name).unlink(missing_ok=True)
    result = runner.invoke(app, ["score", str(out), "--asr_model", str(tiny_whisper), "--score_samples", "1"])
    assert result.exit_code == 0, result.output
    assert "best by combined (error = WER): checkpoint-" in result.output
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(json.loads(line)["step"] for line in (out / "scores.jsonl").read_text().splitlines()) == [2, 4]


def test_transformers_xvector_model_as_the_speaker_encoder(voices, tmp_path):
    """The option path: a tiny random-weight WavLM x-vector model built from a config (numbers meaningless)."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    from higgs_train.scoring.speaker import embed, similarity

    config = WavLMConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=[8] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        tdnn_dim=[8, 8, 8, 8, 16],
        xvector_output_dim=12,
    )
    WavLMForXVector(config).save_pretrained(tmp_path / "sv")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "sv")
    wave = load_audio(str(voices / "en_man.wav"), 16000)
    a, b = embed(wave, 16000, str(tmp_path / "sv")), embed(wave, 16000, str(tmp_path / "sv"))
    assert a.shape == (12,) and similarity(a, b) == pytest.approx(1.0)


def test_each_row_is_scored_with_its_own_prompt_and_a_cap_sized_from_it(tmp_path, monkeypatch):
    import soundfile as sf

    import higgs_train.scoring.score as score_module
    from higgs_train.data.manifest import load_manifest
    from higgs_train.generate import Speech
    from higgs_train.scoring.score import Scorer, items_from_samples

    sf.write(tmp_path / "long.wav", np.zeros(24000 * 20, np.float32), 24000)
    row = {"audio": "long.wav", "text": "a long row", "system": "Speak slowly.", "scene": "A quiet room."}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    (item,) = items_from_samples(load_manifest(tmp_path / "m.jsonl"), 4)
    assert (item.system, item.scene, item.seconds) == ("Speak slowly.", "A quiet room.", 20.0)
    assert item.max_frames(25, 250) == 775  # 1.5 x 20 s x 25 frames/s + 1 s: not the 250-frame (10 s) default
    seen = {}

    def fake_generate(model, processor, text, ref_audio, ref_text, max_new_frames, temperature, seed=0, **kw):
        seen.update(kw, max_new_frames=max_new_frames)
        return Speech(torch.zeros(24000), 24000, 25)

    monkeypatch.setattr(score_module, "generate_speech", fake_generate)  # where the scorer calls it
    scorer = Scorer.__new__(Scorer)  # no ASR or speaker model needed to see what generation is asked for
    from types import SimpleNamespace

    codec = SimpleNamespace(config=SimpleNamespace(sample_rate=24000, hop_length=960))
    scorer.processor = SimpleNamespace(audio_tokenizer=codec)
    scorer.max_new_frames = 250
    scorer.asr = lambda wave, rate, language: "a long row"
    scorer.speaker_model, scorer.chars_per_second, scorer.rates = "resemblyzer", 15.0, {}
    monkeypatch.setattr("higgs_train.scoring.score.embed", lambda *a: np.ones(4))  # where the scorer calls it
    scorer._speaker = {item.speaker_audio: np.ones(4)}
    scorer.score(None, [item], step=1)
    assert seen == {"max_new_frames": 775, "scene": "A quiet room.", "system": "Speak slowly."}


def test_real_speech_recognition_scores_a_real_clip_low_and_a_wrong_transcript_high(voices):
    """PocketSphinx's bundled English model (a package, no download) on a real recording: the WER scoring computes
    is low against the clip's own transcript and high against another sentence."""
    from higgs_train.scoring.asr import Transcriber

    asr = Transcriber("pocketsphinx")
    wave = load_audio(str(voices / "en_man.wav"), 24000)
    heard = asr(wave, 24000)
    own, _, _ = error_rates((voices / "en_man.txt").read_text(), heard)
    other, _, _ = error_rates((voices / "en_woman.txt").read_text(), heard)
    assert own < 0.2 and other > 0.9, (own, other, heard)


def test_each_row_is_heard_in_its_language_and_timed_at_its_languages_speaking_rate(tmp_path, monkeypatch):
    """A Mandarin row: the ASR is told zh, CER is its error, and its expected duration uses the Mandarin rows'
    speaking rate, not the run's overall one."""
    from types import SimpleNamespace

    import higgs_train.scoring.score as score_module
    from higgs_train.generate import Speech
    from higgs_train.scoring.score import ScoreItem, Scorer

    monkeypatch.setattr(score_module, "generate_speech", lambda *a, **kw: Speech(torch.zeros(48000), 24000, 50))
    monkeypatch.setattr("higgs_train.scoring.score.embed", lambda *a: np.ones(4))  # where the scorer calls it
    heard = []
    scorer = Scorer.__new__(Scorer)
    codec = SimpleNamespace(config=SimpleNamespace(sample_rate=24000, hop_length=960))
    scorer.processor, scorer.max_new_frames, scorer.speaker_model = SimpleNamespace(audio_tokenizer=codec), 250, "x"
    scorer.asr = lambda wave, rate, language: heard.append(language) or "你好世介"
    scorer.chars_per_second, scorer.rates = 15.0, {"zh": 2.0}
    item = ScoreItem("你好世界", "v.wav", language="zh")
    scorer._speaker = {"v.wav": np.ones(4)}
    row = scorer.score(None, [item], step=1)
    assert heard == ["zh"] and (row.metric, row.wer) == ("cer", None)
    assert row.error == row.cer == pytest.approx(0.25) and row.headline_name == "CER"
    assert row.duration_ratio == pytest.approx(1.0)  # 2 s for 4 characters at 2 chars/s (at 15/s it would be 7.5)


def test_a_checkpoint_rotated_away_mid_score_is_skipped_and_said(listened_run, tiny_whisper, tmp_path, monkeypatch):
    import shutil

    import higgs_train.scoring.score as score_module

    run = tmp_path / "run"
    shutil.copytree(listened_run, run)
    real = score_module.Scorer.score

    def rotating(self, model, items, step, *args, **kwargs):  # training rotates checkpoint-4 away meanwhile
        shutil.rmtree(run / "checkpoint-4", ignore_errors=True)
        return real(self, model, items, step, *args, **kwargs)

    monkeypatch.setattr(score_module.Scorer, "score", rotating)
    result = runner.invoke(app, ["score", str(run), "--asr_model", str(tiny_whisper), "--score_samples", "1"])
    assert result.exit_code == 0, result.output
    assert "skipped checkpoint-4: removed while scoring (rotated away by the training run)" in result.output
    assert "--adapter" not in result.output and "scored checkpoint-2" in result.output
