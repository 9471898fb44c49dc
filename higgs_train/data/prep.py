"""`higgs-train prep SRC --output_dir D`: raw recordings -> clean clips and a manifest, with every drop explained.

For each audio file under SRC (with NAME.txt / NAME.lab beside it when transcribed): mono, resampled to
--sample_rate; silero-vad finds the speech; leading and trailing silence are trimmed and recordings longer than
--max_duration are split at pauses; each clip is loudness-normalised to --loudness_lufs (pyloudnorm). A clip is
dropped when outside [--min_duration, --max_duration], near-silent, or untranscribed (without --transcribe);
clipped audio and speaking-rate outliers (outside Tukey's fences, 1.5 x the inter-quartile range) are kept and
flagged. prep_report.json lists every dropped or flagged clip with its reason.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from higgs_train.checkpoint.preflight import refuse_overlap
from higgs_train.data.audio import load_audio
from higgs_train.data.formats import AUDIO_SUFFIXES, TRANSCRIPT_SUFFIXES
from higgs_train.errors import AudioError, ManifestError, OutputDirError
from higgs_train.files import atomic_write_bytes, remove_tmp_files
from higgs_train.scoring.asr import Transcriber
from higgs_train.scoring.stopping import speech_spans
from higgs_train.settings import PrepSettings

REPORT = "prep_report.json"
MANIFEST = "train.jsonl"


@dataclass
class PrepEntry:
    source: str
    clip: str | None = None
    seconds: float = 0.0
    text: str | None = None
    dropped: str | None = None  # why the clip is not in the manifest
    flags: list[str] = field(default_factory=list)  # kept, but worth a look


def segments(
    spans: list[tuple[float, float]], max_len: float, min_pause: float, break_pause: float = 0.75
) -> list[tuple[float, float]]:
    """Group speech spans into segments: always cut at pauses of `break_pause` or more (sentence breaks), and at
    pauses of `min_pause` or more when the segment would otherwise grow past `max_len`; never inside speech."""
    out: list[tuple[float, float]] = []
    for start, end in spans:
        pause = start - out[-1][1] if out else None
        if pause is not None and (pause < min_pause or (pause < break_pause and end - out[-1][0] <= max_len)):
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _normalise_loudness(wave: np.ndarray, rate: int, target: float) -> np.ndarray:
    import pyloudnorm

    meter = pyloudnorm.Meter(rate)
    if len(wave) < int(0.4 * rate):  # the meter needs one 400 ms block
        return wave
    loudness = meter.integrated_loudness(wave)
    if not np.isfinite(loudness):
        return wave
    out = pyloudnorm.normalize.loudness(wave, loudness, target)
    return np.clip(out, -1.0, 1.0)


def _transcript(audio: Path) -> str | None:
    for suffix in TRANSCRIPT_SUFFIXES:
        if audio.with_suffix(suffix).is_file():
            return audio.with_suffix(suffix).read_text(encoding="utf-8-sig").strip() or None
    return None


def prep(
    src: str | Path, output_dir: str | Path, settings: PrepSettings, say: Callable[[str], None] = print
) -> list[PrepEntry]:
    """Clean every recording under `src` into OUTPUT_DIR/clips, write train.jsonl and prep_report.json.

    Raises:
        ManifestError: no recordings under `src`.
        OutputDirError: OUTPUT_DIR cannot be written (full or read-only disk); no half-written clip is left.
    """
    src, out = Path(src), Path(output_dir)
    refuse_overlap("--output_dir", out, {"SRC": src})  # clips written among the recordings they are cut from
    if not src.exists():
        raise ManifestError(f"{src}: no such file or folder; pass a recording or a folder of them", "no data")
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES) if src.is_dir() else [src]
    if not files:
        raise ManifestError(f"{src}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found", "no data")
    try:
        return _prep_files(src, out, files, settings, say)
    except OSError as e:
        raise OutputDirError(
            f"--output_dir {out}: cannot write {e.filename or 'a file'} ({e.strerror or e}); free disk space or fix "
            "permissions, then run prep again"
        ) from e


def _prep_files(src: Path, out: Path, files: list[Path], settings: PrepSettings, say) -> list[PrepEntry]:
    (out / "clips").mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "clips"):  # what a killed prep left half-written
        remove_tmp_files(folder)
    asr = None
    if settings.transcribe:
        asr = Transcriber(settings.asr_model)
    entries: list[PrepEntry] = []
    for audio in files:
        entries += _prep_file(audio, src if src.is_dir() else src.parent, out, settings, asr)
    _flag_rate_outliers(entries)
    kept = [e for e in entries if not e.dropped]
    atomic_write_bytes(
        out / MANIFEST, "".join(json.dumps({"audio_filepath": e.clip, "text": e.text}) + "\n" for e in kept).encode()
    )
    report = {
        "source": str(src),
        "settings": asdict(settings),
        "kept": len(kept),
        "dropped": len(entries) - len(kept),
        "entries": [asdict(e) for e in entries],
    }
    atomic_write_bytes(out / REPORT, json.dumps(report, indent=2).encode())
    minutes = sum(e.seconds for e in kept) / 60
    say(f"{len(files)} recordings -> {len(kept)} clips ({minutes:.1f} min) in {out / MANIFEST}")
    for e in entries:
        if e.dropped or e.flags:
            say(
                f"  {e.clip or e.source}: "
                + (f"dropped: {e.dropped}" if e.dropped else "flagged: " + "; ".join(e.flags))
            )
    return entries


def _prep_file(audio: Path, root: Path, out: Path, s: PrepSettings, asr) -> list[PrepEntry]:
    rate = s.sample_rate
    try:
        wave = load_audio(str(audio), rate)
    except AudioError as e:
        return [PrepEntry(str(audio), dropped=f"{e.reason}: {e}")]
    spans = speech_spans(wave, rate)
    if not spans or float(wave.abs().max()) < 0.01:
        return [PrepEntry(str(audio), seconds=len(wave) / rate, dropped="near-silent: no speech found")]
    text = _transcript(audio)
    parts = segments(spans, s.max_duration - 2 * s.pad, s.min_pause, s.break_pause)  # the padding must fit too
    entries = []
    for i, (start, end) in enumerate(parts):
        a, b = max(0, int((start - s.pad) * rate)), min(len(wave), int((end + s.pad) * rate))
        piece = wave[a:b].numpy()
        stem = audio.relative_to(root).with_suffix("").as_posix().replace("/", "__")
        name = f"clips/{stem}.wav" if len(parts) == 1 else f"clips/{stem}_{i:03d}.wav"
        entry = PrepEntry(str(audio), clip=name, seconds=len(piece) / rate)
        clipped = float(np.mean(np.abs(piece) >= 0.999))
        if clipped > 0.001:
            entry.flags.append(f"clipped: {clipped:.1%} of samples at full scale")
        if not s.min_duration <= entry.seconds <= s.max_duration:
            entry.dropped = f"duration {entry.seconds:.2f}s outside [{s.min_duration}, {s.max_duration}]s"
        elif len(parts) == 1 and text:
            entry.text = text
        elif asr is not None:
            entry.text = asr(torch.from_numpy(piece), rate) or None
            entry.dropped = None if entry.text else "ASR found no words"
        else:
            why = "split from a longer recording, so its transcript no longer fits" if text else "no transcript"
            entry.dropped = f"{why}: pass --transcribe"
        if not entry.dropped:
            buf = io.BytesIO()
            sf.write(buf, _normalise_loudness(piece, rate, s.loudness_lufs), rate, format="WAV", subtype="PCM_16")
            atomic_write_bytes(out / name, buf.getvalue())
        entries.append(entry)
    return entries


def _flag_rate_outliers(entries: list[PrepEntry]) -> None:
    kept = [e for e in entries if not e.dropped and e.text]
    if len(kept) < 4:
        return
    rates = np.array([len(e.text) / e.seconds for e in kept])
    q1, q3 = np.percentile(rates, [25, 75])
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    for e, r in zip(kept, rates, strict=True):
        if not low <= r <= high:
            e.flags.append(f"speaking rate {r:.1f} chars/s outside [{low:.1f}, {high:.1f}] (transcript may not match)")
