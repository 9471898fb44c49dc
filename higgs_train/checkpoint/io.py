"""Durable file operations: every byte that a checkpoint promises is on disk before its name appears."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import torch

from higgs_train.checkpoint import layout
from higgs_train.faults import failpoint


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


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


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
    tmp = layout.tmp_sibling(path, str(os.getpid()))
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


def read_pointer(folder: Path, name: str) -> str | None:
    """The checkpoint name a pointer file (layout.LATEST, layout.BEST) holds, or None."""
    file = Path(folder) / name
    return (file.read_text().strip() or None) if file.is_file() else None


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
