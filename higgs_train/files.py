"""Writing files whole and reading them back, for every module: atomic replacement (a hidden temporary beside
the final name, fsynced, renamed), its leftovers, digests and optional JSON. Nothing here is about checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

from higgs_train.faults import failpoint

TMP_MARK = ".tmp-"  # NAME.tmp-XXXX (checkpoints) and .NAME.tmp-XXXX (everything else): never read as NAME


def tmp_sibling(path: Path, tag: str | None = None) -> Path:
    """A hidden temporary name beside `path` for writing it whole before a rename (never read as `path`)."""
    path = Path(path)
    return path.parent / f".{path.name}{TMP_MARK}{tag or secrets.token_hex(4)}"


def remove_leftovers(path: Path) -> list[Path]:
    """Remove what killed writers of `path` left beside it (every `tmp_sibling(path)`); the caller holds the lock
    that makes it the only writer. Returns what was removed."""
    path = Path(path)
    found = sorted(path.parent.glob(f".{path.name}{TMP_MARK}*")) if path.parent.is_dir() else []
    for leftover in found:
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    return found


def remove_tmp_files(folder: Path) -> list[Path]:
    """Remove the temporaries of atomic writes a killed process left in `folder` (hidden `.NAME.tmp-*` files)."""
    found = sorted(p for p in Path(folder).glob(f".*{TMP_MARK}*") if p.is_file()) if Path(folder).is_dir() else []
    for leftover in found:
        leftover.unlink(missing_ok=True)
    return found


def write_bytes(path: Path, data: bytes) -> None:
    """Write a whole file and fsync it. OS errors (ENOSPC, EACCES, EIO) propagate to the caller."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        failpoint("mid_file", fd=fd, half=view[: len(view) // 2])
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new content, never a mix or a truncated file
    (a full disk leaves the old file or none).

    Raises:
        OSError: with `filename` set to `path`; the temporary file is removed.
    """
    path = Path(path)
    tmp = tmp_sibling(path, str(os.getpid()))
    try:
        write_bytes(tmp, data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        e.filename = e.filename or str(path)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_json(path: str | Path):
    """A JSON file's value, or None when it is missing or unreadable (for optional files of a run folder)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def remove_tree(path: Path) -> str | None:
    """Remove a folder; returns None when it is gone, else why not (the caller says so rather than claim it)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{e.strerror or e} ({e.filename or path})"
    return None
