"""Score an adapter by listening: generate each eval text, transcribe it, compare voices, check the stop."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from higgs_train.checkpoint import layout
from higgs_train.data.audio import load_audio, probe_seconds
from higgs_train.data.manifest import Sample
from higgs_train.errors import AudioError
from higgs_train.files import atomic_write_text
from higgs_train.generate import generate_speech, write_wav
from higgs_train.run_folder import SAMPLES_DIR, SCORES_FILE  # noqa: F401 - the names this module writes
from higgs_train.scoring.asr import Transcriber
from higgs_train.scoring.best import ScoreRow, best_row
from higgs_train.scoring.speaker import embed, similarity
from higgs_train.scoring.stopping import duration_ratio, trailing_share
from higgs_train.scoring.text import error_rates

SCORED_ITEMS = "items.json"


def scored_clips_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / SAMPLES_DIR / f"step-{step}"


def sample_file(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / SAMPLES_DIR / f"step-{step}.wav"


def listened_steps(run_dir: str | Path) -> list[int]:
    """The steps with a sample or scored clips in the run folder, newest first."""
    import re

    folder, steps = Path(run_dir) / SAMPLES_DIR, set()
    for p in folder.iterdir() if folder.is_dir() else []:
        match = re.fullmatch(r"step-(\d+)(\.wav)?", p.name)
        if match and (match.group(2) or (p / SCORED_ITEMS).is_file()):
            steps.add(int(match.group(1)))
    return sorted(steps, reverse=True)


@dataclass(frozen=True)
class ScoreItem:
    text: str
    speaker_audio: str  # the clip whose voice the output should have (the row's target clip)
    ref_audio: str | None = None
    ref_text: str | None = None
    system: str | None = None  # the row's own system prompt and scene: scored as it was trained
    scene: str | None = None
    seconds: float | None = None  # the target clip's duration, which sizes the generation cap
    language: str | None = None  # the row's: text rules, headline metric, ASR language, expected speaking rate

    def max_frames(self, frames_per_second: float, fallback: int) -> int:
        """Room for 1.5 times the target's length plus a second, so a long row is never cut short (and scored as
        if the model had skipped words) while a model that never stops is still bounded."""
        if self.seconds is None:
            return fallback
        return int(self.seconds * 1.5 * frames_per_second) + int(frames_per_second)


def items_from_samples(samples: list[Sample], limit: int) -> list[ScoreItem]:
    """The target text of each row, with its context clip as the voice prompt when the row clones a voice."""
    items = []
    for sample in samples[:limit]:
        turns = list(sample.turns)
        audio_turns = [i for i, t in enumerate(turns) if t.audio]  # the last one is the target
        ref_audio = ref_text = None
        if len(audio_turns) > 1:
            ref = audio_turns[-2]
            ref_audio = turns[ref].audio
            ref_text = next((t.text for t in reversed(turns[:ref]) if t.role == "user" and t.text), "")
        system = next((t.text for t in turns if t.role == "system"), None)
        scene = next((t.text for t in turns if t.role == "scene"), None)
        try:
            seconds = probe_seconds(sample.target_audio)
        except AudioError:
            seconds = None
        items.append(
            ScoreItem(
                sample.target_text, sample.target_audio, ref_audio, ref_text, system, scene, seconds, sample.language
            )
        )
    return items


class Scorer:
    """Holds the ASR model and the reference speaker embeddings; scores any number of checkpoints.

    `rates` maps a language to its training rows' speaking rate (chars/s); other rows use `chars_per_second`.
    `languages` are those of the rows it will score: an ASR model that cannot hear one is refused here.
    """

    def __init__(
        self,
        processor,
        asr_model: str,
        chars_per_second: float,
        max_new_frames: int = 500,
        speaker_model: str = "resemblyzer",
        rates: dict[str, float] | None = None,
        languages: set | frozenset = frozenset(),
    ):

        self.processor = processor
        self.asr = Transcriber(asr_model, languages=languages)
        self.chars_per_second = chars_per_second
        self.rates = rates or {}
        self.max_new_frames = max_new_frames
        self.speaker_model = speaker_model
        self._speaker: dict[str, np.ndarray] = {}

    def _speaker_embedding(self, path: str) -> np.ndarray:

        if path not in self._speaker:
            rate = 16000
            self._speaker[path] = embed(load_audio(path, rate), rate, self.speaker_model)
        return self._speaker[path]

    def score(
        self, model, items: list[ScoreItem], step: int, eval_loss: float | None = None, keep: Path | None = None
    ) -> ScoreRow:
        """Score `model` on `items`; with `keep`, each generated clip goes to KEEP/item-I.wav and what it was asked
        and how it scored to KEEP/items.json (the listening report reads them)."""

        per_item, kept = [], []
        codec = self.processor.audio_tokenizer.config
        fps = codec.sample_rate / codec.hop_length
        for item in items:
            speech = generate_speech(
                model,
                self.processor,
                item.text,
                item.ref_audio,
                item.ref_text,
                item.max_frames(fps, self.max_new_frames),
                temperature=0.0,
                scene=item.scene,
                system=item.system,
            )
            heard = self.asr(speech.wave, speech.sample_rate, item.language)
            wer, cer, metric = error_rates(item.text, heard, item.language)
            mine = embed(speech.wave, speech.sample_rate, self.speaker_model)
            voice = similarity(mine, self._speaker_embedding(item.speaker_audio))
            seconds = len(speech.wave) / speech.sample_rate
            if keep is not None:
                name = write_wav(speech, Path(keep) / f"item-{len(kept)}.wav").name
                kept.append({"file": name, "text": item.text, "target_audio": item.speaker_audio, "wer": wer})
                kept[-1].update(ref_audio=item.ref_audio, ref_text=item.ref_text, similarity=voice, seconds=seconds)
                kept[-1].update(cer=cer, metric=metric, language=item.language, heard=heard)
            rate = self.rates.get(item.language, self.chars_per_second)
            per_item.append(
                (
                    wer,
                    cer,
                    voice,
                    duration_ratio(seconds, item.text, rate),
                    trailing_share(speech.wave, speech.sample_rate),
                    cer if metric == "cer" else wer,
                    metric,
                )
            )
        if keep is not None:
            atomic_write_text(Path(keep) / SCORED_ITEMS, json.dumps(kept, indent=1, default=float) + "\n")
        *numbers, metrics = zip(*per_item, strict=True)
        wer, cer, voice, ratio, trail, error = (_mean(col) for col in numbers)
        return ScoreRow(
            step, wer, cer, voice, ratio, trail, eval_loss, metric="+".join(sorted(set(metrics))), error=error
        )


def _mean(values) -> float | None:
    """The mean of the known values (WER is None for rows in scripts without spaces), None when none is known."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def append_score(run_dir: str | Path, row: ScoreRow) -> None:
    with open(Path(run_dir) / SCORES_FILE, "a") as f:
        f.write(json.dumps({**row.to_dict(), "time": time.time()}) + "\n")


def read_scores(run_dir: str | Path) -> list[ScoreRow]:
    path = Path(run_dir) / SCORES_FILE
    if not path.exists():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        data = json.loads(line)
        data.pop("time", None)
        rows[data["step"]] = ScoreRow(**data)  # a later score of the same step replaces an earlier one
    return [rows[k] for k in sorted(rows)]


def mark_best(run_dir: str | Path, by: str) -> ScoreRow | None:
    """Point OUTPUT_DIR/best at the best scored checkpoint that still exists; returns its row."""

    run_dir = Path(run_dir)
    rows = [r for r in read_scores(run_dir) if (run_dir / layout.checkpoint_name(r.step)).is_dir()]
    best = best_row(rows, by)
    if best is not None:
        atomic_write_text(run_dir / layout.BEST, layout.checkpoint_name(best.step) + "\n")
    return best
