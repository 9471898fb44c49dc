"""Audio -> codes, once per clip: a sharded Arrow cache (`datasets`) keyed by the clip's identity and the audio
tokenizer.

A changed file (size or mtime), another dataset fingerprint or another audio tokenizer gets a new key, so only
what changed is re-encoded. New codes are written in shards of SHARD_CLIPS clips, each saved beside its final
name and renamed into place, so a run killed mid-encoding keeps every finished shard and resumes after them.
Decoding and resampling run in `num_workers` DataLoader workers; encoding runs in the main process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from higgs_train import faults
from higgs_train.data.audio import load_audio, source_identity
from higgs_train.errors import AudioError

CACHE_SUBDIR = "cache/codes"
SHARD_CLIPS = int(os.environ.get("HIGGS_TRAIN_SHARD_CLIPS", "256"))  # clips per cache shard: what a kill can lose


@dataclass
class Clip:
    """A clip's codes (num_codebooks, frames) int16, its duration in seconds and its RMS level in dBFS."""

    codes: np.ndarray
    seconds: float
    rms_db: float | None = None


def tokenizer_fingerprint(audio_tokenizer) -> str:
    """Identify an audio tokenizer by its config and where it was loaded from."""
    ident = audio_tokenizer.config.to_json_string(use_diff=False) + str(audio_tokenizer.name_or_path)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def clip_key(source: str, fingerprint: str) -> str:
    return hashlib.sha256(f"{source_identity(source)}|{fingerprint}".encode()).hexdigest()


class CodeCache:
    """OUTPUT_DIR/cache/codes/shard-*/: each shard a `datasets` folder with columns key, codes, seconds."""

    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir) / CACHE_SUBDIR

    def shards(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("shard-"))

    def load(self, keys: set[str]) -> dict[str, Clip]:
        import datasets

        found: dict[str, Clip] = {}
        for shard in self.shards():
            table = datasets.load_from_disk(str(shard))
            wanted = [i for i, key in enumerate(table["key"]) if key in keys]
            for row in table.select(wanted).with_format("numpy"):
                rms = float(row["rms_db"]) if "rms_db" in row else None  # shards from before the column: unknown
                found[str(row["key"])] = Clip(np.stack(row["codes"]).astype(np.int16), float(row["seconds"]), rms)
        return found

    def add(self, entries: dict[str, Clip]) -> None:
        import datasets

        keys = sorted(entries)
        table = datasets.Dataset.from_dict(
            {
                "key": keys,
                "codes": [entries[k].codes.tolist() for k in keys],
                "seconds": [entries[k].seconds for k in keys],
                "rms_db": [entries[k].rms_db for k in keys],
            }
        )
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.time_ns()}-{os.getpid()}"
        tmp = self.root / f".{name}.writing"
        table.save_to_disk(str(tmp))
        tmp.rename(self.root / name)

    def clean(self) -> None:
        """Remove shards that a killed run left half-written."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.endswith(".writing"):
                    shutil.rmtree(p, ignore_errors=True)


class _Decode(torch.utils.data.Dataset):
    def __init__(self, todo: list[tuple[str, str]], sample_rate: int):
        self.todo, self.sample_rate = todo, sample_rate

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int):
        source, key = self.todo[i]
        try:
            return key, load_audio(source, self.sample_rate), None
        except AudioError as e:
            return key, None, e


def encode_clips(
    clips: list[str],
    audio_tokenizer,
    output_dir: str | Path,
    num_workers: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[dict[str, Clip], dict[str, AudioError]]:
    """Codes for every clip, from the cache where present, decoded and encoded (and cached) where not.

    Args:
        clips: audio sources (paths or embedded-dataset sources); errors name the source, not the row.
        audio_tokenizer: a `HiggsAudioV2TokenizerModel`.
        output_dir: the run folder; the cache lives in OUTPUT_DIR/cache/codes.
        num_workers: processes decoding and resampling audio.
        progress: optional callable(done, total, seconds of audio so far).

    Returns:
        (source -> Clip for the good clips, source -> AudioError for clips that are missing or undecodable).
    """
    fingerprint = tokenizer_fingerprint(audio_tokenizer)
    errors: dict[str, AudioError] = {}
    keys: dict[str, str] = {}
    for source in dict.fromkeys(clips):
        try:
            keys[source] = clip_key(source, fingerprint)
        except OSError:
            try:
                load_audio(source, 0)
            except AudioError as e:
                errors[source] = e
    cache = CodeCache(output_dir)
    cache.clean()
    found = cache.load(set(keys.values()))
    todo = [(src, key) for src, key in keys.items() if key not in found]
    rate = audio_tokenizer.config.sample_rate
    device = next(audio_tokenizer.parameters()).device
    loader = torch.utils.data.DataLoader(
        _Decode(todo, rate), batch_size=None, num_workers=num_workers, collate_fn=lambda x: x
    )
    pending: dict[str, Clip] = {}
    by_key = {key: src for src, key in keys.items()}
    seconds, shards_written = 0.0, 0
    for done, (key, wave, error) in enumerate(loader, start=1):
        if error is not None:
            errors[by_key[key]] = error
        else:
            with torch.no_grad():
                codes = audio_tokenizer.encode(wave.to(device)[None, None]).audio_codes[0]
            rms_db = float(20 * torch.log10(wave.pow(2).mean().sqrt().clamp_min(1e-9)))
            pending[key] = Clip(codes.to(torch.int16).cpu().numpy(), len(wave) / rate, rms_db)
            seconds += len(wave) / rate
        if len(pending) >= SHARD_CLIPS:
            cache.add(pending)
            found.update(pending)
            pending = {}
            shards_written += 1
            faults.set_step(shards_written)
            faults.failpoint("after_shard")
        if progress:
            progress(done, len(todo), seconds)
    if pending:
        cache.add(pending)
        found.update(pending)
    return {src: found[key] for src, key in keys.items() if key in found}, errors
