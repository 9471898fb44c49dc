"""Audio decoding: any file soundfile reads (WAV, FLAC, OGG, MP3), or audio bytes inside a saved dataset, mixed
to mono and resampled with torchaudio."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from higgs_train.data.formats import EMBEDDED, undecoded
from higgs_train.errors import AudioError
from higgs_train.files import sha256_file


def _embedded_bytes(source: str) -> bytes:
    spec, row, column = source[len(EMBEDDED) :].split("::")
    return undecoded(spec, column)[int(row)][column]["bytes"]


def source_identity(source: str, digest=sha256_file) -> str:
    """What a clip holds: the sha256 of a file's bytes (not its path, size or mtime, which a rewrite in place can
    keep; `digest` may remember it, see identity.FileDigests); the dataset's fingerprint, row and column when
    embedded.

    Raises:
        OSError: the file cannot be read.
    """
    if source.startswith(EMBEDDED):
        spec, row, column = source[len(EMBEDDED) :].split("::")
        return f"{undecoded(spec, column)._fingerprint}|{row}|{column}"
    return digest(source)


def source_exists(source: str) -> bool:
    return source.startswith(EMBEDDED) or Path(source).is_file()


def _readable(path: str, prefix: str):
    """What soundfile reads for a source: the file's path, or an embedded clip's bytes.

    Raises:
        AudioError: the source does not exist.
    """
    if not source_exists(path):
        raise _missing(path, prefix)
    return io.BytesIO(_embedded_bytes(path)) if path.startswith(EMBEDDED) else path


def _missing(path: str, prefix: str) -> AudioError:
    if os.path.islink(path):
        return AudioError(
            f"{prefix}audio file {path} is a broken or looping symbolic link; point it at a real file",
            "missing audio",
        )
    if os.path.isdir(path):
        return AudioError(
            f"{prefix}{path} is a folder, not an audio file; fix the path in the manifest", "missing audio"
        )
    return AudioError(f"{prefix}audio file {path} not found; fix the path in the manifest", "missing audio")


def probe_seconds(path: str, where: str = "") -> float:
    """A clip's duration from its header alone (nothing is decoded), so that an hour-long file is refused by
    --max_duration without ever holding its samples in memory.

    Raises:
        AudioError: missing, unreadable or empty, as in `load_audio`.
    """
    prefix = f"{where}: " if where else ""
    try:
        info = sf.info(_readable(path, prefix))
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as e:
        raise AudioError(
            f"{prefix}cannot decode audio file {path} ({e}); convert it to WAV or FLAC", "undecodable audio"
        ) from e
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(
            f"{prefix}audio file {path} is empty (0 samples); remove the row or replace the file", "empty audio"
        )
    return info.frames / info.samplerate


def load_audio(path: str, sample_rate: int, where: str = "") -> torch.Tensor:
    """Decode one clip to a mono float32 waveform at `sample_rate`.

    Args:
        path: the audio file, or an embedded-dataset source (formats.EMBEDDED).
        sample_rate: the rate the audio tokenizer expects.
        where: "manifest:line" of the row that names the file, for error messages.

    Returns:
        A 1-D float32 tensor.

    Raises:
        AudioError: the file is missing, cannot be decoded, holds no samples or non-finite ones (`reason` says
            which).
    """
    prefix = f"{where}: " if where else ""
    return decode_audio(_readable(path, prefix), path, sample_rate, prefix)


def decode_audio(readable, path: str, sample_rate: int, prefix: str = "") -> torch.Tensor:
    """`load_audio` of what soundfile reads (a path or a file-like of audio bytes); `path` names it in errors."""
    try:
        data, file_rate = sf.read(readable, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        raise AudioError(
            f"{prefix}cannot decode audio file {path} ({e}); convert it to WAV or FLAC", "undecodable audio"
        ) from e
    if data.shape[0] == 0:
        raise AudioError(
            f"{prefix}audio file {path} is empty (0 samples); remove the row or replace the file", "empty audio"
        )
    if not np.isfinite(data).all():  # float WAVs can hold NaN/Inf, which the codec turns into all-zero codes
        bad = int((~np.isfinite(data)).any(axis=1).sum())
        raise AudioError(
            f"{prefix}audio file {path} holds {bad} NaN or infinite samples; re-export it or remove the row",
            "non-finite audio",
        )
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if file_rate != sample_rate:
        mono = AF.resample(mono, file_rate, sample_rate)
    return mono
