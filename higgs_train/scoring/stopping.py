"""Does the voice stop when the text is done? Duration against the expected duration, and the share of the clip
after the last stretch of speech (silero-vad): a clip that never stops, or rambles on in noise, scores high."""

from __future__ import annotations

import functools

import torch
import torchaudio.functional as AF

VAD_RATE = 16000


@functools.lru_cache(maxsize=1)
def _vad():
    from silero_vad import load_silero_vad

    return load_silero_vad()


def speech_spans(wave: torch.Tensor, sample_rate: int) -> list[tuple[float, float]]:
    """(start, end) seconds of the speech that silero-vad finds."""
    from silero_vad import get_speech_timestamps

    if len(wave) == 0:
        return []
    audio = AF.resample(wave.float(), sample_rate, VAD_RATE)
    spans = get_speech_timestamps(audio, _vad(), sampling_rate=VAD_RATE, return_seconds=True)
    return [(float(s["start"]), float(s["end"])) for s in spans]


def trailing_share(wave: torch.Tensor, sample_rate: int) -> float:
    """Share of the clip after its last speech (1.0 when no speech is found at all)."""
    duration = len(wave) / sample_rate
    spans = speech_spans(wave, sample_rate)
    if duration == 0 or not spans:
        return 1.0
    return max(0.0, duration - spans[-1][1]) / duration


def duration_ratio(seconds: float, text: str, chars_per_second: float) -> float:
    """Generated duration over the duration expected from the text at the training set's speaking rate."""
    expected = max(len(text), 1) / chars_per_second
    return seconds / expected
