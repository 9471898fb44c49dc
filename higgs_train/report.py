"""`higgs-train report RUN`: one self-contained RUN/report.html to choose a checkpoint by ear and by eye.

The page holds the data report's summary, the training and score curves (PNG inlined), the score table with the
best checkpoint marked, and for each sampled or scored step audio players for what the model said beside the real
clip of the voice and the text it was asked to speak. Audio is linked relative to the run folder (reference clips
are copied into RUN/report_files/ first), so the page opens from disk with no network, and keeps working when
the run folder is copied elsewhere. Written atomically after each score or sample during training, and on demand.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import time
from pathlib import Path

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.io import read_pointer
from higgs_train.data.audio import load_audio
from higgs_train.data.prepare import REPORT_FILE
from higgs_train.errors import AudioError, HiggsTrainError
from higgs_train.files import atomic_write_bytes, atomic_write_text, read_json
from higgs_train.language import parse_languages
from higgs_train.metrics import METRICS_FILE, read_metrics
from higgs_train.plot import plot_panels, score_panels, training_panels
from higgs_train.run_folder import REPORT_FILES, REPORT_HTML  # noqa: F401 - the names this module writes
from higgs_train.scoring.score import SCORED_ITEMS, listened_steps, read_scores, sample_file, scored_clips_dir


def refresh_report(run_dir, say) -> None:
    """Rewrite RUN/report.html after a score or sample; a failure is logged and training goes on."""
    try:
        write_report(run_dir)
    except Exception as e:  # the report is a view of the run folder: it never stops training
        say(f"warning: report.html not updated ({type(e).__name__}: {e}); training goes on")


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html (atomically) from what the run folder holds now.

    Raises:
        HiggsTrainError: RUN is not a run folder.
    """

    run = Path(run_dir)
    if not (run / METRICS_FILE).is_file() and not (run / layout.CONFIG_FILE).is_file():
        raise HiggsTrainError(
            f"{run}: not a run folder (no {METRICS_FILE} or {layout.CONFIG_FILE}); pass a run's --output_dir"
        )
    config = read_json(run / layout.CONFIG_FILE) or {}
    data = read_json(run / REPORT_FILE)
    rows = read_metrics(run) if (run / METRICS_FILE).is_file() else []
    scores = read_scores(run)
    best = read_pointer(run, layout.BEST)
    parts = [
        _head(run, config, rows),
        _data_section(data),
        _curves_section(rows, scores),
        _scores_section(scores, best),
        _listen_section(run, config, best),
        '<p id="audio-status" data-ok="0" data-failed="0">checking the clips...</p>',
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    out = run / REPORT_HTML
    atomic_write_text(out, "\n".join(parts) + "\n")
    return out


def _section(key: str, title: str, body: str) -> str:
    return f"<section id='{key}'><h2>{title}</h2>{body}</section>"


def _e(value) -> str:
    return html.escape(str(value))


def _head(run: Path, config: dict, rows: list[dict]) -> str:
    steps = max((r["step"] for r in rows if "step" in r), default=0)
    facts = [
        ("base model", config.get("model", "?")),
        ("LoRA", f"r={config.get('lora_r', '?')} on {config.get('lora_targets', '?')}"),
        ("steps logged", steps),
        ("written", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>higgs-train: {_e(run.name)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_e(run.name)}</h1>" + _facts(facts)
    )


def _text(value, language: str | None = None) -> str:
    """A table cell of text someone wrote: its language when known, and dir="auto" so Arabic or Hebrew runs right to
    left whatever the page's direction."""
    lang = f' lang="{_e(language)}"' if language else ""
    return f'<td{lang} dir="auto">{_e(value)}</td>'


def _facts(pairs) -> str:
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f'<table class="facts">{cells}</table>'


def _data_section(data: dict | None) -> str:
    if not data:
        return _section("data", "Data", "<p>No data report yet (written when the data is prepared).</p>")
    stats = data.get("stats") or {}
    duration = stats.get("duration_s") or {}
    pairs = [
        ("manifest", data.get("manifest", "?")),
        ("rows used / read", f"{data.get('good', '?')} / {data.get('rows', '?')}"),
        ("hours", f"{data.get('hours', 0):.2f}"),
        ("speakers", len(stats.get("speakers") or {})),
        ("clip seconds (min / median / max)", " / ".join(str(duration.get(k, "?")) for k in ("min", "median", "max"))),
        ("speaking rate (chars/s)", f"{data.get('chars_per_second', 0):.1f}"),
        ("problems", len(data.get("problems") or [])),
    ]
    for code, part in (stats.get("languages") or {}).items():
        value = f"{part['hours']:.2f} h, {part['clips']} clips, {part['chars_per_second']} chars/s"
        pairs.append((f"language {code}", value))
    return _section("data", "Data", _facts(pairs))


def _png(panels: dict, title: str) -> str:

    buf = io.BytesIO()
    plot_panels(panels, buf, title=title)
    return f'<img alt="{_e(title)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _curves_section(rows: list[dict], scores) -> str:

    if not rows:
        return _section("curves", "Curves", "<p>Nothing logged yet.</p>")
    images = [_png(training_panels(rows), "training")]
    if scores:
        images.append(_png(score_panels(scores), "scores"))
    return _section("curves", "Curves", "".join(images))


def _scores_section(scores, best: str | None) -> str:
    if not scores:
        return _section("scores", "Scores", "<p>No scores (train with --score_steps or run score).</p>")
    names = ("checkpoint", "error", "metric", "WER", "CER", "similarity", "duration ratio", "trailing", "eval loss")

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    body = []
    for s in scores:
        name = s.checkpoint or layout.checkpoint_name(s.step)
        mark = name == best
        values = (s.wer, s.cer, s.similarity, s.duration_ratio, s.trailing_share, s.eval_loss)
        cells = f"<td>{fmt(s.headline)}</td><td>{_e(s.headline_name)}</td>"
        cells += "".join(f"<td>{fmt(v)}</td>" for v in values)
        label = f'<a href="#step-{s.step}">{_e(name)}</a>' + (" &#9733; best" if mark else "")
        body.append(f"<tr{' class=best' if mark else ''}><td>{label}</td>{cells}</tr>")
    head = "".join(f"<th>{n}</th>" for n in names)
    note = (
        "<p>error: each row's headline rate, WER, or CER for languages written without spaces (zh, ja, th, lo, km, "
        "my); the best checkpoint is chosen with it.</p>"
    )
    return _section("scores", "Scores", f"{note}<table><tr>{head}</tr>{''.join(body)}</table>")


def _listen_section(run: Path, config: dict, best: str | None) -> str:

    steps = listened_steps(run)
    if not steps:
        return _section("listen", "Listen", "<p>No samples or scored clips yet.</p>")
    refs = _References(run)
    articles = []
    for step in steps:
        name = layout.checkpoint_name(step)
        parts = [f"<h3>step {step} ({_e(name)}){' &#9733; best' if name == best else ''}</h3>"]
        sample = sample_file(run, step)
        if sample.is_file():
            voice = refs.link(config.get("sample_ref_audio"))
            parts.append(
                "<table><tr><th>sample text</th><th>generated</th><th>voice prompt</th></tr>"
                f"<tr>{_text(config.get('sample_text', ''), _one_language(config))}"
                f"<td>{_player(sample.relative_to(run))}</td>"
                f"<td>{voice}</td></tr></table>"
            )
        scored = scored_clips_dir(run, step)
        rows = [
            f"<tr>{_text(item['text'], item.get('language'))}"
            f"<td>{_player((scored / item['file']).relative_to(run))}</td>"
            f"<td>{refs.link(item.get('target_audio'))}</td><td>{refs.link(item.get('ref_audio'))}</td>"
            f"<td>{_item_error(item)}</td>{_text(item.get('heard', ''), item.get('language'))}"
            f"<td>{item.get('similarity', 0):.3f}</td></tr>"
            for item in read_json(scored / SCORED_ITEMS) or []
        ]
        if rows:
            parts.append(
                "<table><tr><th>target text</th><th>generated</th><th>real clip of the voice</th>"
                f"<th>voice prompt</th><th>error</th><th>heard (ASR)</th><th>similarity</th></tr>{''.join(rows)}"
                "</table>"
            )
        articles.append(f'<article id="step-{step}">{"".join(parts)}</article>')
    return _section("listen", "Listen", "".join(articles))


def _one_language(config: dict) -> str | None:

    codes = parse_languages(config.get("language"))
    return codes[0] if len(codes) == 1 else None


def _item_error(item: dict) -> str:
    """The scored clip's headline rate and its name ("WER 0.250", "CER 0.100")."""
    metric = item.get("metric") or "wer"
    value = item.get(metric)
    return "-" if value is None else f"{metric.upper()} {value:.3f}"


def _player(relative: Path) -> str:
    src = html.escape(relative.as_posix(), quote=True)
    return f'<span class="clip"><audio controls preload="metadata" src="{src}"></audio><span class="len"></span></span>'


class _References:
    """Reference clips copied (as 24 kHz WAV, whatever their source: a file, a dataset's bytes) into
    RUN/report_files/, once each, so the page links inside the run folder only."""

    def __init__(self, run: Path):
        self.run, self.folder = run, run / REPORT_FILES

    def link(self, source: str | None) -> str:
        if not source:
            return "-"
        name = hashlib.sha1(source.encode()).hexdigest()[:16] + ".wav"
        target = self.folder / name
        if not target.is_file():
            try:
                self._copy(source, target)
            except (AudioError, OSError) as e:
                return f'<span class="missing">unavailable: {_e(source)} ({_e(e)})</span>'
        return _player(target.relative_to(self.run))

    @staticmethod
    def _copy(source: str, target: Path) -> None:
        import soundfile as sf

        wave = load_audio(source, 24000)
        buf = io.BytesIO()
        sf.write(buf, wave.numpy(), 24000, format="WAV", subtype="PCM_16")
        target.parent.mkdir(exist_ok=True)
        atomic_write_bytes(target, buf.getvalue())


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }
tr.best { background: #fff4c2; font-weight: 600; }
img { max-width: 100%; display: block; margin-bottom: 1em; }
audio { height: 32px; vertical-align: middle; }
.len { color: #666; margin-left: 6px; font-size: 12px; }
.broken::after, .missing { color: #b00; }
.broken::after { content: "missing or unreadable"; margin-left: 6px; }
article { border-top: 1px solid #ddd; padding-top: 0.5em; }
#audio-status { color: #555; }
"""

# Every player says whether its clip loads: its length once the header is read, "missing or unreadable" if not;
# the line at the end counts both (a quick check, and what the browser test reads).
_SCRIPT = """
(function () {
  var clips = document.querySelectorAll("audio"), ok = 0, failed = 0;
  var status = document.getElementById("audio-status");
  function update() {
    status.dataset.ok = ok; status.dataset.failed = failed; status.dataset.total = clips.length;
    status.textContent = ok + " of " + clips.length + " clips playable" +
      (failed ? ", " + failed + " missing or unreadable" : "");
  }
  function loaded(a) {
    if (a.dataset.state) return;
    a.dataset.state = "ok"; ok++;
    a.parentNode.querySelector(".len").textContent = a.duration.toFixed(2) + " s";
    update();
  }
  function broken(a) {
    if (a.dataset.state) return;
    a.dataset.state = "error"; failed++;
    a.parentNode.classList.add("broken");
    update();
  }
  clips.forEach(function (a) {
    a.addEventListener("loadedmetadata", function () { loaded(a); });
    a.addEventListener("error", function () { broken(a); });
    if (a.readyState >= 1) loaded(a);
    else if (a.error) broken(a);
  });
  update();
})();
"""
