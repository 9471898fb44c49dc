"""Training a new language end to end on real non-English speech: espeak-ng (Debian's package; .ci/run installs it)
speaks Arabic, Hindi, Vietnamese and Mandarin; prepare, train, score, report and export run on it. No offline ASR
hears these languages, so scoring runs through the tiny multilingual Whisper (its words are noise, the language
plumbing is real) and the text rules are checked on the transcripts themselves."""

import json
import shutil
import subprocess

import pytest
import soundfile as sf

from higgs_train.cli import app
from higgs_train.scoring.text import error_rates, normalise
from tests.conftest import runner, train_args
from tests.test_report import BROWSER_FLAGS, CHROMIUM

ESPEAK = shutil.which("espeak-ng")
SENTENCES = {  # (espeak voice, two sentences of four words; Mandarin has no spaces)
    "ar": ("ar", ["مَرْحَبًا بِكُمْ فِي البَيْتِ", "أنا أحب القراءة كثيرا"]),
    "hi": ("hi", ["नमस्ते आप कैसे हैं", "मुझे ज़रूर याद रखना"]),
    "vi": ("vi", ["Xin chào các bạn", "Hôm nay trời đẹp"]),
    "zh": ("cmn", ["你好世界", "我喜欢读书"]),
}
pytestmark = pytest.mark.skipif(ESPEAK is None, reason="no espeak-ng: install Debian's espeak-ng (.ci/run does)")


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """Eight clips, two per language, and a manifest of them with each row's language; an eval manifest of one
    Arabic and one Mandarin row."""
    folder = tmp_path_factory.mktemp("spoken")
    rows = []
    for code, (voice, texts) in SENTENCES.items():
        for i, text in enumerate(texts):
            clip = folder / f"{code}_{i}.wav"
            subprocess.run([ESPEAK, "-v", voice, "-s", "150", "-w", str(clip), text], check=True, capture_output=True)
            rows.append({"audio_filepath": clip.name, "text": text, "language": code, "speaker": "espeak"})
    (folder / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    held = [rows[0], rows[6]]
    (folder / "eval.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in held))
    return folder


@pytest.fixture(scope="module")
def run(spoken, tiny_model, tiny_whisper, tmp_path_factory):
    out = tmp_path_factory.mktemp("new-language") / "run"
    args = train_args(spoken / "train.jsonl", out, tiny_model, "--max_steps", "2", "--save_steps", "2")
    args += ["--language", "ar,hi,vi,zh", "--eval_manifest", str(spoken / "eval.jsonl"), "--score_steps", "2"]
    result = runner.invoke(app, [*args, "--score_samples", "2", "--asr_model", str(tiny_whisper)])
    assert result.exit_code == 0, result.output
    return out


def test_espeak_speech_is_real_audio_and_its_transcripts_follow_the_rules(spoken):
    for code, (_, texts) in SENTENCES.items():
        for i, text in enumerate(texts):
            wave, rate = sf.read(spoken / f"{code}_{i}.wav")
            assert rate == 22050 and len(wave) / rate > 0.5 and abs(wave).max() > 0.05
            assert error_rates(text, text, code)[1] == 0.0
            if code != "zh":
                assert len(normalise(text, code).split()) == 4
    assert error_rates("你好世界", "你好世介", "zh") == (None, 0.25, "cer")


def test_prepare_train_and_score_record_each_language(run):
    report = json.loads((run / "data_report.json").read_text())
    assert {c: v["clips"] for c, v in report["stats"]["languages"].items()} == {"ar": 2, "hi": 2, "vi": 2, "zh": 2}
    assert json.loads((run / "config.json").read_text())["language"] == "ar,hi,vi,zh"
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["config"]["language"] == "ar,hi,vi,zh"
    (row,) = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    assert row["metric"] == "cer+wer" and row["error"] is not None  # Arabic by WER, Mandarin by CER
    items = json.loads((run / "samples" / "step-2" / "items.json").read_text())
    assert [(i["language"], i["metric"]) for i in items] == [("ar", "wer"), ("zh", "cer")]
    assert items[1]["wer"] is None and items[1]["cer"] is not None


def test_export_takes_the_languages_from_the_data(run, tmp_path):
    import yaml

    result = runner.invoke(app, ["export", str(run), str(tmp_path / "shipped")])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "shipped" / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["language"] == ["ar", "hi", "vi", "zh"]
    assert "- languages: ar, hi, vi, zh" in card


def test_the_report_marks_each_text_with_its_language(run):
    text = (run / "report.html").read_text()
    assert '<td lang="ar" dir="auto">مَرْحَبًا بِكُمْ فِي البَيْتِ</td>' in text
    assert '<td lang="zh" dir="auto">你好世界</td>' in text
    assert "<th>language ar</th>" in text


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: install Debian's chromium package (.ci/run does, as root)")
def test_arabic_text_is_laid_out_right_to_left_in_a_real_browser(run, tmp_path):
    """Chromium computes each text cell's direction; the probe script is added to a copy of the page only."""
    page = tmp_path / "probe.html"
    probe = (
        "<script>document.querySelectorAll('td[lang]').forEach(function (td) {"
        "td.dataset.direction = getComputedStyle(td).direction; });</script></body>"
    )
    page.write_text((run / "report.html").read_text().replace("</body>", probe))
    args = [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    dom = subprocess.run(args, capture_output=True, text=True, timeout=120).stdout
    arabic = dom.split('lang="ar"')[1].split(">")[0]
    mandarin = dom.split('lang="zh"')[1].split(">")[0]
    assert 'data-direction="rtl"' in arabic, arabic
    assert 'data-direction="ltr"' in mandarin, mandarin
