"""Audio decoding: any file soundfile reads (WAV, FLAC, OGG, MP3), mixed to mono, resampled with torchaudio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from higgs_train.errors import AudioError


def load_audio(path: str, sample_rate: int, where: str = "") -> torch.Tensor:
    """Decode one clip to a mono float32 waveform at `sample_rate`.

    Args:
        path: the audio file.
        sample_rate: the rate the audio tokenizer expects.
        where: "manifest:line" of the row that names the file, for error messages.

    Returns:
        A 1-D float32 tensor.

    Raises:
        AudioError: the file is missing, cannot be decoded, or holds no samples.
    """
    prefix = f"{where}: " if where else ""
    if not Path(path).is_file():
        raise AudioError(f"{prefix}audio file {path} not found; fix the path in the manifest")
    try:
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{prefix}cannot decode audio file {path} ({e}); convert it to WAV or FLAC") from e
    if data.shape[0] == 0:
        raise AudioError(f"{prefix}audio file {path} is empty (0 samples); remove the row or replace the file")
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if file_rate != sample_rate:
        mono = AF.resample(mono, file_rate, sample_rate)
    return mono
