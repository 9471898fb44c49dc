"""Which rows a run trains on, by content. Every checkpoint records the digest and count (`TrainingProgress`), so a
resume on other data (rows appended, removed, reordered, a text edited, a clip replaced) is never silent: the saved
data position indexes a permutation of the rows it was saved with.

Per row two 64-bit hashes: its content (roles, texts and each clip's content key, which changes when the file's
bytes do, wherever the file lives) and its name (the clips' paths below the folder all of them share, and which
occurrence of them it is). The digest is of the contents in order, so data moved to another folder is the same
data. The run folder keeps each digest's hashes once (`cache/rows/DIGEST.npz`, 16 bytes a row), so a changed
resume can say what changed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from higgs_train.data.manifest import Sample
from higgs_train.data.tokens import row_key
from higgs_train.files import atomic_write_bytes
from higgs_train.run_folder import ROWS_SUBDIR  # noqa: F401 - the names this module writes

IDENTITY_VERSION = "rows1"  # the digest's recipe: a checkpoint of another recipe is not compared (see comparable)


@dataclass(frozen=True)
class DataIdentity:
    digest: str
    rows: int
    names: np.ndarray  # uint64 per row
    contents: np.ndarray  # uint64 per row


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def data_identity(samples: list[Sample], clip_keys: dict[str, str], text_keys=None) -> DataIdentity:
    """The identity of `samples` in their order; `clip_keys` maps each audio source to what it holds (its bytes'
    digest: data/audio.source_identity); `text_keys`, when given, each row's roles and texts as a number already
    (data/tokens.row_key), else they are hashed here."""
    seen: dict[str, int] = {}
    names, contents = np.empty(len(samples), np.uint64), np.empty(len(samples), np.uint64)
    files = [p for s in samples for p in s.audio_paths if p.startswith(os.sep)]
    prefix = os.path.commonprefix(files) if files else ""
    root = prefix.rfind(os.sep) + 1  # names below the folder every clip shares: the same wherever the tree moves
    for i, sample in enumerate(samples):
        paths = "\x1f".join([p[root:] if p.startswith(os.sep) else p for p in sample.audio_paths])
        seen[paths] = seen.get(paths, 0) + 1
        names[i] = _h64(f"{paths}\x1e{seen[paths]}")
        text = row_key(sample) if text_keys is None else int(text_keys[i])
        contents[i] = _h64("\x1f".join([str(text), *[clip_keys.get(p, "") for p in sample.audio_paths]]))
    digest = f"{IDENTITY_VERSION}-{hashlib.sha256(contents.tobytes()).hexdigest()[:32]}"
    return DataIdentity(digest, len(samples), names, contents)


def comparable(saved_digest: str) -> bool:
    """A digest made by this version's recipe: one of an older checkpoint (none, or another recipe) says nothing
    about whether the rows changed."""
    return saved_digest.startswith(f"{IDENTITY_VERSION}-")


def remember(identity: DataIdentity, output_dir: str | Path) -> None:
    """Keep this digest's row hashes in the run folder (once per digest; best effort: only messages need them)."""

    path = Path(output_dir) / ROWS_SUBDIR / f"{identity.digest}.npz"
    if path.exists():
        return
    import io

    buf = io.BytesIO()
    np.savez(buf, names=identity.names, contents=identity.contents)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # without it a changed resume still stops, saying less about what changed


def describe_change(old_digest: str, old_rows: int, new: DataIdentity, output_dir: str | Path) -> str:
    """What differs between the rows saved as `old_digest` and `new`, in words."""
    counts = f"{old_rows} rows then, {new.rows} now"
    path = Path(output_dir) / ROWS_SUBDIR / f"{old_digest}.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            names, contents = saved["names"], saved["contents"]
    except (OSError, ValueError, KeyError):
        return f"other rows ({counts})"
    before = dict(zip(names.tolist(), contents.tolist(), strict=True))
    after = dict(zip(new.names.tolist(), new.contents.tolist(), strict=True))
    added = len(after.keys() - before.keys())
    removed = len(before.keys() - after.keys())
    changed = sum(1 for k in after.keys() & before.keys() if after[k] != before[k])
    parts = [f"{n} {what}" for n, what in ((added, "added"), (removed, "removed"), (changed, "changed")) if n]
    if not parts:
        return f"the same {new.rows} rows in another order"
    return f"{', '.join(parts)} ({counts}; a changed row has another text or clip)"
