"""Speaker similarity: cosine of Resemblyzer (GE2E) embeddings, whose weights ship inside the package."""

from __future__ import annotations

import functools

import numpy as np
import torch


@functools.lru_cache(maxsize=1)
def _encoder():
    from resemblyzer import VoiceEncoder

    return VoiceEncoder("cuda" if torch.cuda.is_available() else "cpu", verbose=False)


def embed(wave: torch.Tensor | np.ndarray, sample_rate: int) -> np.ndarray:
    from resemblyzer import preprocess_wav

    samples = wave.numpy() if isinstance(wave, torch.Tensor) else wave
    prepared = preprocess_wav(samples.astype(np.float32), source_sr=sample_rate)  # 16 kHz, silences trimmed
    if len(prepared) < 1600:  # under 0.1 s of voiced audio: nothing to compare
        return np.zeros(256, dtype=np.float32)
    return _encoder().embed_utterance(prepared)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (0 when either is empty)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na and nb else 0.0
