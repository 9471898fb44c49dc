"""`higgs-train prepare` (and the start of every training run): validate every row, encode every clip once,
write a report of what was dropped and why."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from higgs_train.data.audio import probe_seconds
from higgs_train.data.codes import SHARD_CLIPS, Clip, encode_clips, lookup_clips
from higgs_train.data.formats import Columns
from higgs_train.data.manifest import Problem, Sample, load_manifest
from higgs_train.data.share import ALONE, Share
from higgs_train.errors import AudioError, ManifestError
from higgs_train.files import atomic_write_bytes
from higgs_train.run_folder import DATA_REPORT as REPORT_FILE  # noqa: F401 - the names this module writes
from higgs_train.run_folder import EVAL_DATA_REPORT as EVAL_REPORT_FILE  # noqa: F401

DEFAULT_CHARS_PER_SECOND = 15.0  # English read speech: the speaking rate assumed when a run's data says nothing
EXAMPLES_PER_REASON = 3


@dataclass
class DataReport:
    manifest: str
    rows: int = 0
    good: int = 0
    hours: float = 0.0  # audio hours of the good rows' target clips
    chars_per_second: float = DEFAULT_CHARS_PER_SECOND  # of the good rows: target text characters per audio second
    rates_by_language: dict = field(default_factory=dict)  # the same per row language (scoring's expected duration)
    encode_seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(p.reason for p in self.problems).most_common())

    def examples(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = collections.defaultdict(list)
        for p in self.problems:
            if len(out[p.reason]) < EXAMPLES_PER_REASON:
                out[p.reason].append(p.message)
        return dict(out)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(counts=self.counts(), problems=[asdict(p) for p in self.problems])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DataReport:
        """The inverse of to_dict."""
        fields = {k: v for k, v in data.items() if k != "counts"}
        return cls(**{**fields, "problems": [Problem(**p) for p in data["problems"]]})

    def lines(self) -> list[str]:
        """The human summary: totals, counts per reason, and the first examples of each with file and line."""
        out = [f"{self.manifest}: {self.rows} rows, {self.good} usable ({self.hours:.3f} h of target audio)"]
        for reason, n in self.counts().items():
            out.append(f"  {n} x {reason}")
            out.extend(f"      {m}" for m in self.examples()[reason])
        return out


@dataclass
class PreparedData:
    samples: list[Sample]
    clips: dict[str, Clip]
    report: DataReport
    handles: dict = field(default_factory=dict)  # Sample.source -> its row in the token cache (data/tokens.py)
    contents: dict = field(default_factory=dict)  # audio source -> what it holds (data/audio.source_identity)
    lengths: dict = field(default_factory=dict)  # Sample.source -> its example's tokens, when the check measured it


@dataclass(frozen=True)
class DataLimits:
    min_duration: float = 0.0
    max_duration: float = float("inf")
    max_text_tokens: int = 10**9
    max_tokens: int | None = None  # the model's max_position_embeddings: text, every clip's frames and the delay
    reserved_tokens: tuple[str, ...] = ()  # the tokenizer's special tokens, which a row's text must not hold


class TextCounts:
    """The `tokens` of prepare_data from a text -> count function (tests, benchmarks): each row's longest user
    text; no example lengths, so no --max_tokens check."""

    def __init__(self, count: Callable[[str], int]):
        self.count = count
        self.user_tokens = np.empty(0, np.int64)

    def ensure(self, samples: list[Sample], problems_out=None, should_stop=None, share=None) -> np.ndarray:
        counts = [max((self.count(t.text) for t in s.turns if t.role == "user" and t.text), default=0) for s in samples]
        self.user_tokens = np.asarray(counts, np.int64)
        return np.arange(len(samples))


def prepare_data(
    manifest: str | Path,
    output_dir: str | Path,
    audio_tokenizer,
    tokens,
    limits: DataLimits,
    num_workers: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    fmt: str = "auto",
    say: Callable[[str], None] = print,
    should_stop: Callable[[], bool] = lambda: False,
    shard_clips: int = SHARD_CLIPS,
    columns: Columns = Columns(),
    languages: tuple[str, ...] = (),
    report_file: str = REPORT_FILE,
    share: Share = ALONE,
) -> PreparedData:
    """Parse, validate and encode a manifest; write OUTPUT_DIR/`report_file` (data_report.json).

        Every check that can fail for one row fails for that row alone (a bad row in the report, never a crash):
        text first, then each clip's header (so an hour-long file is refused without being decoded; a clip already
        in the code cache is not opened at all), then decoding and encoding, then the total length once the codes are
        known. `tokens` is a data.tokens.RowTokens (or TextCounts): each row's token ids, cached by content. With a
    `share` of a launch, this process tokenizes and encodes its part of what is not cached (data/share.py).

    Returns:
        The usable samples with their token handles and lengths, the codes of their clips, and the report of the
        rows dropped and why.

    Raises:
        ManifestError: the manifest as a whole cannot be read.
        Interrupted: `should_stop` turned true while encoding (the finished clips are cached).
    """
    problems: list[Problem] = []
    samples = load_manifest(manifest, problems, fmt, columns, languages)
    rows = len(samples) + len(problems)
    start = time.perf_counter()
    samples, handles = _checked_texts(samples, problems, tokens, limits, should_stop, share)
    samples, lookup, errors = _checked_headers(samples, problems, audio_tokenizer, output_dir, limits, say)
    clips, encode_errors = encode_clips(
        [p for s in samples for p in s.audio_paths],
        audio_tokenizer,
        output_dir,
        num_workers,
        progress,
        say,
        should_stop,
        shard_clips,
        lookup,
        share,
    )
    errors.update(encode_errors)
    lengths: dict[str, int] = {}  # the length check measures every row: kept for the batch plan
    good = _keep(samples, problems, lambda s: _check_codes(s, clips, errors, limits, handles, tokens, lengths))
    report = _write_report(
        manifest, rows, good, clips, problems, time.perf_counter() - start, output_dir, report_file, say
    )
    handles = {s.source: handles[s.source] for s in good}
    contents = {p: lookup.contents.get(p, p) for s in good for p in s.audio_paths}
    return PreparedData(good, clips, report, handles, contents, lengths)


def _checked_texts(samples: list[Sample], problems: list[Problem], tokens, limits: DataLimits, should_stop, share):
    """The rows whose texts hold no reserved token, render and fit --max_text_tokens, with their token handles."""
    samples = _keep(samples, problems, lambda s: _check_reserved(s, limits))
    unrenderable: dict[str, ManifestError] = {}
    ids = tokens.ensure(samples, unrenderable, should_stop, share).tolist()
    handles = dict(zip((s.source for s in samples), ids, strict=True))
    return _keep(samples, problems, lambda s: _check_text(s, handles, tokens, unrenderable, limits)), handles


def _checked_headers(samples: list[Sample], problems: list[Problem], audio_tokenizer, output_dir, limits, say):
    """The rows whose clips exist and whose headers say a duration within the limits (a cached clip is not opened:
    its duration is the cache's), the code-cache lookup and the audio errors found so far."""
    sources = [p for s in samples for p in s.audio_paths]
    lookup = lookup_clips(sources, audio_tokenizer, output_dir, say)
    cached = lookup.cached()
    durations, errors = _probe([p for p in dict.fromkeys(sources) if p not in cached])
    durations.update((p, clip.seconds) for p, clip in cached.items())
    return _keep(samples, problems, lambda s: _check_header(s, durations, errors, limits)), lookup, errors


def _write_report(manifest, rows, good, clips, problems, seconds, output_dir, report_file, say) -> DataReport:
    """The report of a prepared manifest (totals, speaking rates, statistics, every bad row), written to
    OUTPUT_DIR/`report_file`; a report that cannot be written is a warning (it is printed anyway)."""
    report = DataReport(
        manifest=str(manifest),
        rows=rows,
        good=len(good),
        hours=sum(clips[s.target_audio].seconds for s in good) / 3600,
        chars_per_second=_speaking_rate(good, clips),
        rates_by_language={
            code: _speaking_rate([s for s in good if s.language == code], clips)
            for code in sorted({s.language for s in good if s.language})
        },
        stats=dataset_stats(good, clips),
        encode_seconds=seconds,
        problems=problems,
    )
    path = Path(output_dir) / report_file
    try:  # several ranks may write the same report: each replaces it whole
        atomic_write_bytes(path, json.dumps(report.to_dict(), indent=2).encode())
    except OSError as e:
        say(f"warning: cannot write {path} ({e.strerror}); the report is printed only")
    return report


def _keep(samples: list[Sample], problems: list[Problem], check) -> list[Sample]:
    kept = []
    for sample in samples:
        problem = check(sample)
        if problem:
            problems.append(problem)
        else:
            kept.append(sample)
    return kept


def _probe(sources: list[str]) -> tuple[dict[str, float], dict[str, AudioError]]:
    """Each source's duration from its header, or why it cannot be read."""
    durations, errors = {}, {}
    for source in sources:
        try:
            durations[source] = probe_seconds(source)
        except AudioError as e:
            errors[source] = e
    return durations, errors


def dataset_stats(samples: list[Sample], clips) -> dict:
    """Hours, clips, speakers, duration histogram, text length, speaking rate and loudness spread."""
    if not samples:
        return {}
    seconds = np.array([clips[s.target_audio].seconds for s in samples])
    chars = np.array([len(s.target_text) for s in samples])
    rate = chars / np.maximum(seconds, 1e-6)
    levels = np.array([c for s in samples if (c := clips[s.target_audio].rms_db) is not None])
    peaks = [c.peak for p in dict.fromkeys(x for s in samples for x in s.audio_paths) if (c := clips[p]).peak]
    speakers = collections.Counter(s.speaker or "(none)" for s in samples)
    languages = {}
    for code in sorted({s.language or "(none)" for s in samples}):
        mine = [i for i, s in enumerate(samples) if (s.language or "(none)") == code]
        languages[code] = {
            "clips": len(mine),
            "hours": round(float(seconds[mine].sum()) / 3600, 4),
            "chars_per_second": round(float(chars[mine].sum() / max(seconds[mine].sum(), 1e-6)), 2),
        }
    edges = [0, 1, 2, 5, 10, 15, 20, 30, 60, float("inf")]
    hist = np.histogram(seconds, bins=edges)[0]
    return {
        "hours": round(float(seconds.sum()) / 3600, 4),
        "clips": len(samples),
        "speakers": dict(speakers.most_common()),
        "languages": languages,
        "duration_s": {
            "min": round(float(seconds.min()), 2),
            "median": round(float(np.median(seconds)), 2),
            "max": round(float(seconds.max()), 2),
        },
        "duration_histogram": {
            f"{lo:g}-{hi:g}s": int(n) for lo, hi, n in zip(edges[:-1], edges[1:], hist, strict=True) if n
        },
        "text_chars": {"min": int(chars.min()), "mean": round(float(chars.mean()), 1), "max": int(chars.max())},
        "chars_per_second": {
            "q1": round(float(np.percentile(rate, 25)), 2),
            "median": round(float(np.median(rate)), 2),
            "q3": round(float(np.percentile(rate, 75)), 2),
        },
        "over_full_scale": {"clips": sum(p > 1.0 for p in peaks), "peak": round(max(peaks, default=0.0), 2)},
        "rms_dbfs": (
            {
                "min": round(float(levels.min()), 1),
                "median": round(float(np.median(levels)), 1),
                "max": round(float(levels.max()), 1),
            }
            if len(levels)
            else None
        ),
    }


def stats_lines(stats: dict) -> list[str]:
    if not stats:
        return []
    d, t, r = stats["duration_s"], stats["text_chars"], stats["chars_per_second"]
    lines = [
        f"data: {stats['hours']:.3f} h in {stats['clips']} clips, {len(stats['speakers'])} speaker(s)",
        f"  duration {d['min']}-{d['max']} s (median {d['median']}); "
        + ", ".join(f"{k}: {n}" for k, n in stats["duration_histogram"].items()),
        f"  text {t['min']}-{t['max']} chars (mean {t['mean']}); speaking rate {r['q1']}-{r['q3']} chars/s "
        f"(median {r['median']})",
    ]
    languages = stats.get("languages", {})
    if set(languages) - {"(none)"}:
        lines.append(
            "  languages: "
            + "; ".join(
                f"{c} {v['hours']:.3f} h, {v['clips']} clips, {v['chars_per_second']} chars/s"
                for c, v in languages.items()
            )
        )
    over = stats.get("over_full_scale") or {}
    if over.get("clips"):
        lines.append(
            f"  warning: {over['clips']} clip(s) have samples beyond full scale (peak {over['peak']}, full scale "
            "1.0): the codec hears them clipped; normalise them (higgs-train prep does) or check the files"
        )
    if stats.get("rms_dbfs"):
        lv = stats["rms_dbfs"]
        lines.append(f"  loudness {lv['min']} to {lv['max']} dBFS RMS (median {lv['median']})")
    return lines


def stats_warnings(stats: dict, samples_per_step: int, steps: int) -> list[str]:
    """Warnings for data too small or too uneven for the chosen run."""
    if not stats:
        return []
    out = []
    minutes = stats["hours"] * 60
    if minutes < 10:
        out.append(f"only {minutes:.1f} minutes of audio: a voice fine-tune usually wants 30 minutes or more")
    passes = samples_per_step * steps / stats["clips"]
    if passes > 50:
        out.append(
            f"{steps} steps show each clip about {passes:.0f} times: expect overfitting; lower --max_steps or add data"
        )
    speakers = stats["speakers"]
    if len(speakers) > 1 and max(speakers.values()) > 0.8 * stats["clips"]:
        top = max(speakers, key=speakers.get)
        out.append(f"speaker {top} has {speakers[top]} of {stats['clips']} clips: the others may barely be learnt")
    d = stats["duration_s"]
    if d["median"] and d["max"] > 10 * d["median"]:
        out.append(f"clip lengths are very uneven ({d['min']}-{d['max']} s, median {d['median']} s)")
    return out


def _speaking_rate(samples: list[Sample], clips) -> float:
    seconds = sum(clips[s.target_audio].seconds for s in samples)
    return sum(len(s.target_text) for s in samples) / seconds if seconds else DEFAULT_CHARS_PER_SECOND


def _check_reserved(sample: Sample, limits: DataLimits) -> Problem | None:
    for turn in sample.turns:
        if not turn.text or "<|" not in turn.text:  # every reserved token is <|...|>: most texts skip the scan
            continue
        reserved = next((tok for tok in limits.reserved_tokens if tok in turn.text), None)
        if reserved:
            message = (
                f"{sample.source}: the {turn.role} text holds the reserved token {reserved}, which the model reads "
                "as markup; remove it from the text"
            )
            return Problem(sample.source, "reserved token in text", message)
    return None


def _check_text(sample: Sample, handles, tokens, unrenderable, limits: DataLimits) -> Problem | None:
    if sample.source in unrenderable:
        e = unrenderable[sample.source]
        return Problem(sample.source, e.reason, str(e))
    if tokens.user_tokens[handles[sample.source]] > limits.max_text_tokens:
        message = f"{sample.source}: text has over --max_text_tokens {limits.max_text_tokens} tokens; split the row"
        return Problem(sample.source, "text too long", message)
    return None


def _audio_problem(sample: Sample, errors) -> Problem | None:
    for source in sample.audio_paths:
        if source in errors:
            e = errors[source]
            return Problem(sample.source, e.reason, f"{sample.source}: {e}")
    return None


def _check_header(sample: Sample, durations, errors, limits: DataLimits) -> Problem | None:
    problem = _audio_problem(sample, errors)
    if problem:
        return problem
    seconds = durations[sample.target_audio]
    if seconds < limits.min_duration:
        message = f"{sample.source}: clip is {seconds:.2f}s, under --min_duration {limits.min_duration}s"
        return Problem(sample.source, "too short", message)
    if seconds > limits.max_duration:
        message = f"{sample.source}: clip is {seconds:.2f}s, over --max_duration {limits.max_duration}s; split it"
        return Problem(sample.source, "too long", message)
    return None


def _check_codes(sample: Sample, clips, errors, limits: DataLimits, handles, tokens, lengths) -> Problem | None:
    problem = _audio_problem(sample, errors)
    if problem or limits.max_tokens is None:
        return problem
    length = tokens.length(handles[sample.source], [clips[p].codes.shape[1] for p in sample.audio_paths])
    lengths[sample.source] = length
    if length > limits.max_tokens:
        seconds = sum(clips[p].seconds for p in sample.audio_paths)
        message = (
            f"{sample.source}: {length} tokens (text, {seconds:.1f}s of audio in {len(sample.audio_paths)} clip(s) "
            f"and the delay pattern) exceed the model's {limits.max_tokens} positions; use a shorter reference or "
            "target clip"
        )
        return Problem(sample.source, "sequence too long", message)
    return None


def bad_data_error(report: DataReport, report_file: str = REPORT_FILE) -> ManifestError:
    """The error for --on_bad_sample error: the counts, the first bad line, where the full report is."""
    counts = ", ".join(f"{n} {reason}" for reason, n in report.counts().items())
    first = report.problems[0].message
    return ManifestError(
        f"{len(report.problems)} of {report.rows} rows cannot be trained on ({counts}); first: {first}. "
        f"Fix them, or pass --on_bad_sample skip to drop them (full list: {report_file} in --output_dir)",
        report.problems[0].reason,
    )
