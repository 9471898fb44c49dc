"""Audio -> codes, once per clip: a sharded, memory-mapped Arrow cache keyed by the clip's content and the audio
tokenizer's weights.

A changed file (its bytes), another dataset fingerprint or another audio tokenizer (its weights, wherever it was
loaded from) gets a new key, so only what changed is re-encoded. New codes are written in shards of SHARD_CLIPS
clips, each saved beside its final name with a checksum of every file and renamed into place, so a run killed
mid-encoding keeps every finished shard and resumes after them, and a shard damaged later is found, dropped with
a warning and re-encoded. Decoding and resampling run in `num_workers` DataLoader workers; encoding runs in the
main process.
"""

from __future__ import annotations

import hashlib
import json
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
from higgs_train.data.share import ALONE, Share
from higgs_train.errors import AudioError, Interrupted, OutputDirError
from higgs_train.files import sha256_file
from higgs_train.identity import FileDigests, weights_fingerprint
from higgs_train.run_folder import CODES_SUBDIR as CACHE_SUBDIR  # noqa: F401 - the names this module writes

CHECKSUMS = "checksums.json"
DIGESTS = "digests.json"  # clip and shard file digests remembered by stat (identity.FileDigests)
SHARD_FILE = "codes.arrow"
SHARD_CLIPS = 256  # clips per cache shard by default (--cache_shard_clips): what a kill during encoding can lose


@dataclass
class Clip:
    """A clip's codes (num_codebooks, frames) int16, its duration in seconds and its RMS level in dBFS."""

    codes: np.ndarray
    seconds: float
    rms_db: float | None = None
    peak: float | None = None  # the largest absolute sample (1.0 is full scale), None in older caches


def tokenizer_fingerprint(audio_tokenizer) -> str:
    """Identify an audio tokenizer by its config and its weights, not by where it was loaded from."""
    config = audio_tokenizer.config.to_dict()
    config.pop("_name_or_path", None)
    ident = json.dumps(config, sort_keys=True, default=str) + weights_fingerprint(audio_tokenizer)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def clip_key(identity: str, fingerprint: str) -> str:
    """The cache key of a clip: what it holds (`source_identity`) encoded by which audio tokenizer."""
    return hashlib.sha256(f"{identity}|{fingerprint}".encode()).hexdigest()


class CodeCache:
    """OUTPUT_DIR/cache/codes/shard-*/: each shard a folder holding SHARD_FILE, an Arrow IPC file with columns key,
    codes (each clip's (codebooks, frames) int16 codes, flattened), codebooks, seconds, rms_db, and CHECKSUMS with
    the sha256 of every file in it.

    Shards are memory-mapped: a clip's codes are a view into the file, read when a batch needs them, and every
    process on a node shares the pages. Checksums are checked when a shard is first seen and again only when a
    file's stat changes (identity.FileDigests), so a start costs no re-read of hundreds of hours of codes.
    """

    def __init__(self, output_dir: str | Path, say: Callable[[str], None] = print, digests: FileDigests | None = None):
        self.root = Path(output_dir) / CACHE_SUBDIR
        self.say = say
        self.digests = digests or FileDigests(self.root / DIGESTS)
        self.seen: set[Path] = set()  # shards this object already verified and read (or wrote): never again

    def shards(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("shard-"))

    def load(self, keys: set[str]) -> dict[str, Clip]:
        """The cached clips among `keys`, from the shards this object has not read (or written) yet: ask once for
        everything, then only for what other processes added since. A shard that fails its checksums or does not
        load is removed with a warning, so its clips are encoded again."""
        found: dict[str, Clip] = {}
        for shard in [s for s in self.shards() if s not in self.seen]:
            self.seen.add(shard)
            problem = _shard_problem(shard, self.digests)
            if problem is None:
                try:
                    clips = _read_shard(shard / SHARD_FILE, keys)
                except (OSError, ValueError, KeyError, ArithmeticError) as e:  # pyarrow's errors derive from these
                    problem = f"does not load ({type(e).__name__})"
            if problem is not None:
                self.say(f"warning: code cache shard {shard} {problem}; removing it, its clips are encoded again")
                shutil.rmtree(shard, ignore_errors=True)
                continue
            found.update(clips)
        self.digests.save()
        return found

    def add(self, entries: dict[str, Clip]) -> None:
        """Write one shard: into a hidden folder, checksums last, then renamed into place.

        Raises:
            OutputDirError: the shard cannot be written (a full or read-only disk); nothing partial is left.
        """
        import pyarrow as pa

        keys = sorted(entries)
        codes = [entries[k].codes for k in keys]
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "codes": pa.array([c.reshape(-1) for c in codes], pa.list_(pa.int16())),
                "codebooks": pa.array([c.shape[0] for c in codes], pa.int16()),
                "seconds": pa.array([entries[k].seconds for k in keys], pa.float64()),
                "rms_db": pa.array([entries[k].rms_db for k in keys], pa.float64()),
                "peak": pa.array([entries[k].peak for k in keys], pa.float64()),
            }
        )
        name = f"shard-{time.time_ns()}-{os.getpid()}"
        tmp = self.root / f".{name}.writing"
        try:
            tmp.mkdir(parents=True)
            with pa.OSFile(str(tmp / SHARD_FILE), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            sums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1))
            tmp.rename(self.root / name)
            self.seen.add(self.root / name)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputDirError(
                f"--output_dir {self.root.parent.parent}: cannot write the code cache ({e.strerror or e}); free "
                "disk space or fix permissions, then rerun: the clips encoded before are kept"
            ) from e

    def clean(self) -> None:
        """Remove shards that a killed run left half-written."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.endswith(".writing"):
                    shutil.rmtree(p, ignore_errors=True)


def _read_shard(path: Path, keys: set[str]) -> dict[str, Clip]:
    """The clips of one shard among `keys`, their codes views into the memory-mapped file."""
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all().combine_chunks()
    column = table.column("codes").chunk(0) if table.num_rows else None
    values = column.values.to_numpy(zero_copy_only=True) if column is not None else None
    offsets = column.offsets.to_numpy() if column is not None else None
    books, seconds, rms = (table.column(c).to_pylist() for c in ("codebooks", "seconds", "rms_db"))
    peaks = table.column("peak").to_pylist() if "peak" in table.column_names else [None] * table.num_rows
    found = {}
    for i, key in enumerate(table.column("key").to_pylist()):
        if key in keys:
            codes = values[offsets[i] : offsets[i + 1]].reshape(books[i], -1)
            found[key] = Clip(codes, seconds[i], rms[i], peaks[i])
    return found


def _shard_problem(shard: Path, digests: FileDigests) -> str | None:
    """Why a shard cannot be trusted, or None: every file listed in CHECKSUMS present and equal, nothing else."""
    try:
        sums = json.loads((shard / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return f"has no readable {CHECKSUMS} (written by an older version, or damaged)"
    if not isinstance(sums, dict) or SHARD_FILE not in sums:
        return "was written by an older version"
    present = {p.name for p in shard.iterdir() if p.is_file()} - {CHECKSUMS}
    if present != set(sums):
        return "has missing or extra files"
    for name, digest in sums.items():
        if digests(shard / name) != digest:
            return f"fails its checksum ({name} truncated or changed)"
    return None


@dataclass
class ClipLookup:
    """What each readable source holds (`source_identity`), its cache key, and the cached clips (by key)."""

    contents: dict[str, str]
    keys: dict[str, str]
    found: dict[str, Clip]
    cache: CodeCache  # remembers the shards it verified: the other processes' new ones are all a reload reads

    def cached(self) -> dict[str, Clip]:
        """source -> its cached Clip."""
        return {src: self.found[key] for src, key in self.keys.items() if key in self.found}


def lookup_clips(sources, audio_tokenizer, output_dir: str | Path, say: Callable[[str], None] = print) -> ClipLookup:
    """Each readable source's cache key (its content; digests remembered by stat) and what the cache already holds
    for them. An unreadable source is left out: the header check names it."""
    fingerprint = tokenizer_fingerprint(audio_tokenizer)
    digests = FileDigests(Path(output_dir) / CACHE_SUBDIR / DIGESTS)
    contents, keys = {}, {}
    for source in dict.fromkeys(sources):
        try:
            contents[source] = source_identity(source, digests)
        except OSError:
            continue
        keys[source] = clip_key(contents[source], fingerprint)
    digests.save()
    cache = CodeCache(output_dir, say, digests)
    cache.clean()
    return ClipLookup(contents, keys, cache.load(set(keys.values())), cache)


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
    say: Callable[[str], None] = print,
    should_stop: Callable[[], bool] = lambda: False,
    shard_clips: int = SHARD_CLIPS,
    lookup: ClipLookup | None = None,
    share: Share = ALONE,
) -> tuple[dict[str, Clip], dict[str, AudioError]]:
    """Codes for every clip, from the cache where present, decoded and encoded (and cached) where not.

    Args:
        clips: audio sources (paths or embedded-dataset sources); errors name the source, not the row.
        audio_tokenizer: a `HiggsAudioV2TokenizerModel`.
        output_dir: the run folder; the cache lives in OUTPUT_DIR/cache/codes.
        num_workers: processes decoding and resampling audio.
        progress: optional callable(done, total, seconds of audio so far).
        say: where warnings go (a damaged cache shard).
        should_stop: polled between clips; when true, the clips encoded so far are written to the cache first.
        shard_clips: clips per cache shard.
        lookup: what lookup_clips found already (it is done here when not given).
        share: this process's part of a launch: it encodes its share of the clips not cached, then reads what
            the others encoded (data/share.py).

    Returns:
        (source -> Clip for the good clips, source -> AudioError for clips that are missing, undecodable, hold
        non-finite samples or cannot be encoded).

    Raises:
        Interrupted: `should_stop` turned true (the finished clips are in the cache).
        OutputDirError: the cache cannot be written.
    """
    lookup = lookup or lookup_clips(clips, audio_tokenizer, output_dir, say)
    errors: dict[str, AudioError] = {}
    keys: dict[str, str] = {}
    for source in dict.fromkeys(clips):
        try:
            keys[source] = lookup.keys.get(source) or clip_key(
                source_identity(source), tokenizer_fingerprint(audio_tokenizer)
            )
        except OSError as e:  # missing clips were dropped from the header check; this one cannot be read
            errors[source] = AudioError(f"cannot read audio file {source} ({e.strerror}); check it", "unreadable audio")
    cache, found = lookup.cache, lookup.found
    sources_of: dict[str, list[str]] = {}  # the same bytes under several paths are one clip
    for src, key in keys.items():
        sources_of.setdefault(key, []).append(src)
    todo = sorted(key for key in sources_of if key not in found)  # the same list in every process
    share.agree("codes", todo, should_stop)  # nobody writes before everyone has planned
    mine = [(sources_of[key][0], key) for key in share.mine(todo)]
    start = time.perf_counter()
    failed, seconds = _encode_all(
        mine, audio_tokenizer, cache, found, num_workers, progress, should_stop, shard_clips, len(sources_of)
    )
    _gather_encoded(share, todo, found, failed, cache, say, should_stop, (len(mine), seconds, start))
    for key, error in failed.items():
        errors.update((src, error) for src in sources_of[key])
    return {src: found[key] for src, key in keys.items() if key in found}, errors


def _encode_all(mine, audio_tokenizer, cache, found, num_workers, progress, should_stop, shard_clips, total):
    """Decode (in `num_workers` processes) and encode the (source, key) pairs of `mine`, writing shards of
    `shard_clips` as they fill (`found` grows with them; `total`: the clips of the whole manifest, for the stop
    message). Returns (key -> why, for the clips that failed; seconds of audio encoded).

    Raises:
        Interrupted: `should_stop` turned true (what was encoded is written first).
    """
    rate = audio_tokenizer.config.sample_rate
    device = next(audio_tokenizer.parameters()).device
    loader = torch.utils.data.DataLoader(
        _Decode(mine, rate), batch_size=None, num_workers=num_workers, collate_fn=lambda x: x
    )
    source = {key: src for src, key in mine}
    pending: dict[str, Clip] = {}
    failed: dict[str, AudioError] = {}
    seconds, shards_written = 0.0, 0
    for done, (key, wave, error) in enumerate(loader, start=1):
        if error is None:
            try:
                clip = encode_wave(audio_tokenizer, wave, rate, device)
                pending[key] = clip
                seconds += clip.seconds
            except AudioError as e:
                error = AudioError(f"{source[key]}: {e}", e.reason)
        if error is not None:
            failed[key] = error
        if len(pending) >= shard_clips:
            cache.add(pending)
            found.update(pending)
            pending = {}
            shards_written += 1
            faults.count("cache", shards_written)
            faults.failpoint("after_shard")
        faults.count("clip", done)
        faults.failpoint("encoded")
        if progress:
            progress(done, len(mine), seconds)
        if should_stop() and done < len(mine):
            if pending:
                cache.add(pending)
            raise Interrupted(
                f"stopped by signal while encoding: {len(found) + len(pending)} of {total} clips are in the code cache "
                f"of {cache.root.parent.parent}; rerun the same command to encode the rest and train"
            )
    if pending:
        cache.add(pending)
        found.update(pending)
    return failed, seconds


def _gather_encoded(share, todo, found, failed, cache, say, should_stop, speed) -> None:
    """Every process's outcome: the clips the others encoded (read from their shards), the clips nobody could
    encode and why, and the encoding speed per process and in total."""
    clips, seconds, start = speed
    mine = {"clips": clips, "seconds": seconds, "wall": time.perf_counter() - start}
    mine["failed"] = {key: [str(e), e.reason] for key, e in failed.items()}
    everyone = share.gather("codes", mine, should_stop)
    for other in everyone:
        failed.update((key, AudioError(msg, reason)) for key, (msg, reason) in other["failed"].items())
    rest = set(todo) - found.keys() - failed.keys()
    if rest:
        found.update(cache.load(rest))
    if not todo:
        return
    if share.world > 1:
        for rank, part in enumerate(everyone):
            say(f"encoding, process {rank}: {_speed(part)}")
    total = {k: sum(p[k] for p in everyone) for k in ("clips", "seconds")} | {"wall": max(p["wall"] for p in everyone)}
    say(f"encoding{' in total' if share.world > 1 else ''}: {_speed(total)}")


def _speed(part: dict) -> str:
    wall = max(part["wall"], 1e-9)
    return (
        f"{part['clips']} clips, {part['seconds'] / 3600:.3f} h of audio in {wall:.1f} s: {part['clips'] / wall:.1f} "
        f"clips/s, {part['seconds'] / wall:.0f} h of audio per hour"
    )


def encode_wave(audio_tokenizer, wave: torch.Tensor, rate: int, device) -> Clip:
    """One clip's codes; a clip the codec cannot take (shorter than its kernels, say) is an AudioError."""
    try:
        with torch.no_grad():
            codes = audio_tokenizer.encode(wave.to(device)[None, None]).audio_codes[0]
    except (RuntimeError, ValueError, IndexError) as e:
        raise AudioError(
            f"the audio tokenizer cannot encode this {len(wave) / rate:.3f}s clip ({type(e).__name__}: "
            f"{str(e)[:120]}); remove the row or use a longer clip",
            "unencodable audio",
        ) from e
    if codes.numel() == 0:
        raise AudioError(
            f"the {len(wave) / rate:.3f}s clip encodes to 0 frames; use a longer clip", "unencodable audio"
        )
    rms_db = float(20 * torch.log10(wave.pow(2).mean().sqrt().clamp_min(1e-9)))
    return Clip(codes.to(torch.int16).cpu().numpy(), len(wave) / rate, rms_db, float(wave.abs().max()))
