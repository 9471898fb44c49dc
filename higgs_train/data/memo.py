"""A warm start's shortcut: the run's prepared rows, remembered by what they were made from.

A start with the same manifest files (their bytes, at the same place), the same data settings and tokenizers reads
its rows back as arrays (each row's token key, length and clips) instead of parsing, validating and measuring every
row again; the clips are still checked to hold what they held (by stat, data/audio.source_identity), and the token
and code caches to hold every row and clip. Anything else prepares the data again (the caches make that cost the
parsing only) and remembers the new result.

OUTPUT_DIR/cache/prepared/KEY/: train.arrow and eval.arrow (one row per example), clips.arrow (one row per clip),
data.json (the reports, the eval rows, the training rows' identity digest); written into a hidden folder and
renamed into place, so a memo is whole or absent. Only manifests that are files are remembered (a folder or hub
dataset prepares at every start).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from higgs_train.data.manifest import Sample, Turn
from higgs_train.data.rows import DataIdentity
from higgs_train.files import sha256_file, tmp_sibling
from higgs_train.language import parse_languages
from higgs_train.run_folder import MEMO_SUBDIR  # noqa: F401 - the names this module writes

MEMO_VERSION = "prepared1"  # what a memo holds and how its key is made: change it with either
KEEP = 3  # memos kept per run folder, newest first
PARTS = ("train", "eval")
COLUMNS = ("token_keys", "lengths", "offsets", "clip_ids", "names", "contents")  # offsets/clip_ids: one list column


@dataclass
class Remembered:
    """What a memo holds: per part (train, eval) the COLUMNS arrays; per clip its path and content."""

    parts: dict[str, dict[str, np.ndarray]]
    paths: list[str]
    contents: list[str]
    reports: list[dict]  # DataReport.to_dict() of each manifest prepared, in order
    eval_samples: list[Sample]
    digest: str  # of the training rows (data/rows.py)

    def identity(self) -> DataIdentity:
        train = self.parts["train"]
        return DataIdentity(self.digest, len(train["lengths"]), train["names"], train["contents"])


def memo_key(cfg, limits, layout_fingerprint: str, audio_fingerprint: str) -> str | None:
    """The key of a run's prepared data: every input of preparing it. None when a manifest is not a file."""

    manifests = [m for m in (cfg.train_manifest, cfg.eval_manifest) if m]
    if not all(Path(m).is_file() for m in manifests):
        return None
    split = (
        {"eval_fraction": cfg.eval_fraction, "seed": cfg.seed} if cfg.eval_fraction and not cfg.eval_manifest else {}
    )
    ident = {
        "version": MEMO_VERSION,
        "manifests": [[os.path.abspath(m), sha256_file(m)] for m in manifests],
        "eval_is_train": cfg.eval_manifest == cfg.train_manifest,
        "format": cfg.format,
        "columns": [cfg.text_column, cfg.audio_column],
        "languages": parse_languages(cfg.language),
        "limits": asdict(limits),
        "tokenizers": [layout_fingerprint, audio_fingerprint],
        **split,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def recall(output_dir: str | Path, key: str) -> Remembered | None:
    """The memo of `key`, or None (absent, of another version, or unreadable: then the data is prepared again)."""
    import pyarrow as pa

    folder = Path(output_dir) / MEMO_SUBDIR / key
    try:
        meta = json.loads((folder / "data.json").read_text())
        parts = {}
        for part in PARTS:
            table = pa.ipc.open_file(pa.memory_map(str(folder / f"{part}.arrow"))).read_all().combine_chunks()
            clips = table.column("clips").chunk(0) if table.num_rows else pa.array([], pa.list_(pa.int32()))
            parts[part] = {c: table.column(c).to_numpy() for c in COLUMNS if c not in ("offsets", "clip_ids")}
            parts[part].update(offsets=clips.offsets.to_numpy().astype(np.int64), clip_ids=clips.values.to_numpy())
        clips = pa.ipc.open_file(pa.memory_map(str(folder / "clips.arrow"))).read_all()
        paths, contents = clips.column("path").to_pylist(), clips.column("content").to_pylist()
        samples = [_sample(s) for s in meta["eval_samples"]]
        return Remembered(parts, paths, contents, meta["reports"], samples, meta["digest"])
    except (OSError, ValueError, KeyError, TypeError, ArithmeticError):  # pyarrow's errors derive from these
        return None


def remember(output_dir: str | Path, key: str, memo: Remembered) -> None:
    """Write `memo` as `key` (best effort: without it the next start prepares again) and drop the oldest."""
    import pyarrow as pa

    root = Path(output_dir) / MEMO_SUBDIR
    final = root / key
    if root.is_dir():  # what a killed writer left (the run folder's lock makes this the only writer)
        for leftover in root.glob(".*"):
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = tmp_sibling(final)
    try:
        tmp.mkdir(parents=True)
        for part in PARTS:
            cols = memo.parts[part]
            table = {c: cols[c] for c in COLUMNS if c not in ("offsets", "clip_ids")}
            table["clips"] = pa.ListArray.from_arrays(cols["offsets"].astype(np.int32), cols["clip_ids"])
            _write(tmp / f"{part}.arrow", pa.table(table))
        _write(tmp / "clips.arrow", pa.table({"path": memo.paths, "content": memo.contents}))
        meta = {
            "reports": memo.reports,
            "eval_samples": [_sample_dict(s) for s in memo.eval_samples],
            "digest": memo.digest,
        }
        (tmp / "data.json").write_text(json.dumps(meta))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.utime(final)
    kept = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_age)
    for old in kept[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)


def _age(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _write(path: Path, table) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _sample_dict(sample: Sample) -> dict:
    turns = [list(t) for t in sample.turns]
    return {"source": sample.source, "turns": turns, "speaker": sample.speaker, "language": sample.language}


def _sample(d: dict) -> Sample:
    return Sample(d["source"], tuple(Turn(*t) for t in d["turns"]), d["speaker"], d["language"])
