"""Speaker similarity: cosine of speaker embeddings. Default: Resemblyzer (GE2E), whose weights ship inside the
package; or a transformers speaker-verification model (x-vector head, e.g. microsoft/wavlm-base-plus-sv)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from higgs_train.errors import ModelError


@functools.lru_cache(maxsize=1)
def _encoder():
    from resemblyzer import VoiceEncoder

    return VoiceEncoder("cuda" if torch.cuda.is_available() else "cpu", verbose=False)


RESEMBLYZER = "resemblyzer"


@functools.lru_cache(maxsize=2)
def _xvector(model: str):
    import os
    from pathlib import Path

    from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

    if Path(model).is_dir():
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return AutoFeatureExtractor.from_pretrained(model), AutoModelForAudioXVector.from_pretrained(model).eval()
    except (OSError, ValueError) as e:
        raise ModelError(f"--speaker_model {model}: cannot load the speaker-verification model ({e})") from e


def embed(wave: torch.Tensor | np.ndarray, sample_rate: int, model: str = RESEMBLYZER) -> np.ndarray:
    """A speaker embedding of one clip (zeros when it holds under 0.1 s of voiced audio)."""
    if model != RESEMBLYZER:
        return _embed_xvector(wave, sample_rate, model)
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


@torch.no_grad()
def _embed_xvector(wave, sample_rate: int, model: str) -> np.ndarray:
    import torchaudio.functional as AF

    extractor, net = _xvector(model)
    samples = torch.as_tensor(wave).float()
    if len(samples) < sample_rate // 10:
        return np.zeros(net.config.xvector_output_dim, dtype=np.float32)
    audio = AF.resample(samples, sample_rate, extractor.sampling_rate).numpy()
    inputs = extractor(audio, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    return net(**inputs).embeddings[0].numpy()
