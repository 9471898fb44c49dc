"""Audio -> codes, once per clip: an Arrow cache (`datasets`) keyed by file identity and audio tokenizer.

A changed file (size or mtime) or another audio tokenizer gets a new key, so only what changed is re-encoded.
The cache folder is replaced atomically (written beside it, then renamed), so a killed run leaves the old
cache or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from higgs_train.data.audio import load_audio

CACHE_SUBDIR = "cache/codes"


def tokenizer_fingerprint(audio_tokenizer) -> str:
    """Identify an audio tokenizer by its config and where it was loaded from."""
    ident = audio_tokenizer.config.to_json_string(use_diff=False) + str(audio_tokenizer.name_or_path)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def clip_key(path: str, fingerprint: str) -> str:
    st = os.stat(path)
    return hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}|{fingerprint}".encode()).hexdigest()


@torch.no_grad()
def encode_clip(path: str, audio_tokenizer, where: str = "") -> np.ndarray:
    """Encode one clip to codes of shape (num_codebooks, frames), int16."""
    wave = load_audio(path, audio_tokenizer.config.sample_rate, where)
    device = next(audio_tokenizer.parameters()).device
    codes = audio_tokenizer.encode(wave.to(device)[None, None]).audio_codes[0]
    return codes.to(torch.int16).cpu().numpy()


def encode_clips(
    clips: Iterable[tuple[str, str]], audio_tokenizer, output_dir: str | Path, progress=None
) -> dict[str, np.ndarray]:
    """Codes for every clip, read from the run's cache where present, encoded and added to it where not.

    Args:
        clips: (audio path, "manifest:line" of a row naming it) pairs; duplicates are encoded once.
        audio_tokenizer: a `HiggsAudioV2TokenizerModel`.
        output_dir: the run folder; the cache lives in OUTPUT_DIR/cache/codes.
        progress: optional callable(done, total) for a progress display.

    Returns:
        path -> codes (num_codebooks, frames).

    Raises:
        AudioError: a clip is missing or cannot be decoded (the message names the manifest line).
    """
    import datasets

    fingerprint = tokenizer_fingerprint(audio_tokenizer)
    wanted = {}
    for path, where in clips:
        if path not in wanted:
            if not os.path.isfile(path):
                load_audio(path, 0, where)  # raises the AudioError naming the row
            wanted[path] = (clip_key(path, fingerprint), where)
    cache_dir = Path(output_dir) / CACHE_SUBDIR
    cached: dict[str, np.ndarray] = {}
    if cache_dir.is_dir():
        table = datasets.load_from_disk(str(cache_dir)).with_format("numpy")
        keys_needed = {key for key, _ in wanted.values()}
        for row in table:
            if row["key"] in keys_needed:
                cached[row["key"]] = np.stack(row["codes"]).astype(np.int16)
    new: dict[str, np.ndarray] = {}
    todo = [(p, k, w) for p, (k, w) in wanted.items() if k not in cached]
    for i, (path, key, where) in enumerate(todo):
        new[key] = encode_clip(path, audio_tokenizer, where)
        if progress:
            progress(i + 1, len(todo))
    if new:
        _write_cache(cache_dir, {**cached, **new})
    everything = {**cached, **new}
    return {path: everything[key] for path, (key, _) in wanted.items()}


def _write_cache(cache_dir: Path, entries: dict[str, np.ndarray]) -> None:
    import datasets

    keys = sorted(entries)
    table = datasets.Dataset.from_dict({"key": keys, "codes": [entries[k].tolist() for k in keys]})
    tmp = cache_dir.with_name(cache_dir.name + f".writing-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    table.save_to_disk(str(tmp))
    old = cache_dir.with_name(cache_dir.name + f".old-{os.getpid()}")
    if cache_dir.exists():
        cache_dir.rename(old)
    tmp.rename(cache_dir)
    shutil.rmtree(old, ignore_errors=True)
