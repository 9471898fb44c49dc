"""A language for the run and per row: --language, the `language` field in every manifest form that can carry it,
what prepare reports per language, and ASR that is told the language (or refused when it cannot hear it)."""

import json

import pytest
import torch

from higgs_train.cli import app
from higgs_train.config import build_config
from higgs_train.data.manifest import Problem, load_manifest
from higgs_train.errors import ConfigError, ModelError
from higgs_train.language import headline_metric, parse_languages
from tests.conftest import runner, train_args


def write(tmp_path, rows, name="m.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_language_codes_and_metric():
    assert parse_languages("ar, EN,ar") == ("ar", "en") and parse_languages(None) == ()
    assert [headline_metric(c) for c in ("zh", "ja", "th", "ar", "en", None)] == ["cer"] * 3 + ["wer"] * 3
    with pytest.raises(ConfigError) as e:
        parse_languages("english")
    assert str(e.value) == (
        "--language 'english': english is not an ISO 639-1 code; give two-letter codes such as en, ar, hi, vi, zh "
        "(comma-separated for mixed data)"
    )
    with pytest.raises(ConfigError, match="--language 'xx': xx is not an ISO 639-1 code"):
        build_config({"train_manifest": "m.jsonl", "output_dir": "out", "language": "xx"})


def test_a_row_language_field_in_jsonl_and_chatml_with_the_runs_default(tmp_path):
    rows = [
        {"audio_filepath": "a.wav", "text": "مرحبا", "language": "ar"},
        {"audio_filepath": "b.wav", "text": "hello"},
        {"audio_filepath": "c.wav", "text": "hola", "language": "es-MX"},  # a locale names its language
        {
            "messages": [
                {"role": "user", "content": "नमस्ते"},
                {"role": "assistant", "content": [{"type": "audio", "audio_url": "d.wav"}]},
            ],
            "language": "hi",
        },
    ]
    path = write(tmp_path, rows)
    assert [s.language for s in load_manifest(path)] == ["ar", None, "es", "hi"]
    problems: list[Problem] = []
    kept = load_manifest(path, problems, languages=("en",))
    assert [s.language for s in kept] == ["en"]  # the one --language fills rows without a field
    assert [p.reason for p in problems] == ["language not in --language"] * 3
    assert problems[0].message == (
        f"{path}:1: field \"language\" is 'ar', not one of --language en; add it to --language or fix the row"
    )
    mixed = load_manifest(path, languages=("ar", "en", "es", "hi"))
    assert [s.language for s in mixed] == ["ar", None, "es", "hi"]  # several codes: no default


def test_a_bad_language_is_a_bad_row_naming_file_line_and_field(tmp_path):
    path = write(tmp_path, [{"audio_filepath": "a.wav", "text": "x", "language": "arabic"}])
    problems: list[Problem] = []
    assert load_manifest(path, problems) == []
    assert (problems[0].reason, problems[0].message) == (
        "invalid language",
        f"{path}:1: field \"language\" is 'arabic', not an ISO 639-1 code; use a two-letter code such as en, ar, zh",
    )


def test_csv_folder_and_parquet_carry_a_language(tmp_path):
    import datasets

    csv = tmp_path / "m.csv"
    csv.write_text("audio_file|text|language\na.wav|one | two|ar\n")
    assert [(s.target_text, s.language) for s in load_manifest(csv)] == [("one | two", "ar")]
    folder = tmp_path / "folder"
    folder.mkdir()
    meta = {"samples": [{"audio_file": "a.wav", "transcript": "xin chào", "language": "vi"}]}
    (folder / "metadata.json").write_text(json.dumps(meta))
    assert [s.language for s in load_manifest(folder)] == ["vi"]
    table = {"audio": ["/x/a.wav", "/x/b.wav"], "text": ["你好", "hello"], "locale": ["zh-CN", None]}
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "t.parquet"))
    assert [s.language for s in load_manifest(tmp_path / "t.parquet")] == ["zh", None]


def test_prepare_reports_hours_clips_and_speaking_rate_per_language(synth_manifest, tiny_model, tmp_path):
    rows = [json.loads(line) for line in synth_manifest.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["audio_filepath"] = str(synth_manifest.parent / row["audio_filepath"])
        row["language"] = "ar" if i % 2 else "en"
    manifest = write(tmp_path, rows)
    out = tmp_path / "run"
    result = runner.invoke(app, ["prepare", *train_args(manifest, out, tiny_model, "--language", "ar,en")])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "data_report.json").read_text())
    languages = report["stats"]["languages"]
    assert set(languages) == {"ar", "en"} and sum(v["clips"] for v in languages.values()) == len(rows)
    assert set(report["rates_by_language"]) == {"ar", "en"}
    assert "languages: ar " in result.output and "chars/s; en " in result.output


def test_english_only_asr_is_refused_for_other_languages(tiny_whisper, tmp_path):
    from higgs_train.scoring.asr import Transcriber
    from higgs_train.tiny import build_tiny_whisper

    with pytest.raises(ModelError) as e:
        Transcriber("pocketsphinx", languages={"ar", "en", None})
    assert str(e.value) == (
        "--asr_model pocketsphinx transcribes English only, but the data is in ar; pass a multilingual model such "
        "as --asr_model openai/whisper-large-v3"
    )
    with pytest.raises(ModelError, match="--asr_model openai/whisper-small.en transcribes English only, but the data"):
        Transcriber("openai/whisper-small.en", languages={"hi"})  # by name: refused before any download
    english = build_tiny_whisper(tmp_path / "english-only", multilingual=False)
    with pytest.raises(ModelError, match="transcribes English only, but the data is in vi, zh"):
        Transcriber(str(english), languages={"zh", "vi"})
    Transcriber(str(english), languages={"en", None})  # English (or unknown) data: fine


def test_whisper_is_told_the_language_and_to_transcribe(tiny_whisper, monkeypatch):
    from higgs_train.scoring.asr import Transcriber

    asr = Transcriber(str(tiny_whisper), languages={"ar"})
    seen = []
    model = asr._pipe.model
    original = model.generate

    def spy(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("language", "task")})
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    wave = torch.randn(16000) * 0.1
    assert isinstance(asr(wave, 16000, "ar"), str)
    assert isinstance(asr(wave, 16000, None), str)
    assert seen == [{"language": "ar", "task": "transcribe"}, {"language": None, "task": None}]


def test_a_run_whose_asr_cannot_hear_its_language_stops_before_training(synth_manifest, tiny_model, tmp_path):
    out = tmp_path / "run"
    args = train_args(synth_manifest, out, tiny_model, "--max_steps", "2", "--language", "ar", "--eval_fraction")
    result = runner.invoke(app, [*args, "0.34", "--score_steps", "1", "--asr_model", "pocketsphinx"])
    assert result.exit_code == 2, result.output
    assert "--asr_model pocketsphinx transcribes English only, but the data is in ar" in result.output
    assert not list(out.glob("checkpoint-*"))
