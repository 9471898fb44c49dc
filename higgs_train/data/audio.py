"""Audio decoding: any file soundfile reads (WAV, FLAC, OGG, MP3), or audio bytes inside a saved dataset, mixed
to mono and resampled with torchaudio."""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from higgs_train.data.formats import EMBEDDED
from higgs_train.errors import AudioError


@functools.lru_cache(maxsize=4)
def _saved_dataset(folder: str, column: str):
    import datasets

    return datasets.load_from_disk(folder).cast_column(column, datasets.Audio(decode=False))


def _embedded_bytes(source: str) -> bytes:
    folder, row, column = source[len(EMBEDDED) :].split("::")
    return _saved_dataset(folder, column)[int(row)][column]["bytes"]


def source_identity(source: str) -> str:
    """What makes a clip's content: path, size and mtime of a file; dataset fingerprint and row when embedded."""
    if source.startswith(EMBEDDED):
        folder, row, column = source[len(EMBEDDED) :].split("::")
        return f"{folder}|{_saved_dataset(folder, column)._fingerprint}|{row}|{column}"
    st = os.stat(source)
    return f"{source}|{st.st_size}|{st.st_mtime_ns}"


def source_exists(source: str) -> bool:
    return source.startswith(EMBEDDED) or Path(source).is_file()


def load_audio(path: str, sample_rate: int, where: str = "") -> torch.Tensor:
    """Decode one clip to a mono float32 waveform at `sample_rate`.

    Args:
        path: the audio file, or an embedded-dataset source (formats.EMBEDDED).
        sample_rate: the rate the audio tokenizer expects.
        where: "manifest:line" of the row that names the file, for error messages.

    Returns:
        A 1-D float32 tensor.

    Raises:
        AudioError: the file is missing, cannot be decoded, or holds no samples (`reason` says which).
    """
    prefix = f"{where}: " if where else ""
    if not source_exists(path):
        raise AudioError(f"{prefix}audio file {path} not found; fix the path in the manifest", "missing audio")
    try:
        target = io.BytesIO(_embedded_bytes(path)) if path.startswith(EMBEDDED) else path
        data, file_rate = sf.read(target, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        raise AudioError(
            f"{prefix}cannot decode audio file {path} ({e}); convert it to WAV or FLAC", "undecodable audio"
        ) from e
    if data.shape[0] == 0:
        raise AudioError(
            f"{prefix}audio file {path} is empty (0 samples); remove the row or replace the file", "empty audio"
        )
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if file_rate != sample_rate:
        mono = AF.resample(mono, file_rate, sample_rate)
    return mono
