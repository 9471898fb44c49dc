"""What only checkpoints write and read: torch-serialized state and the pointer files (the general durable file
operations are in higgs_train/files.py)."""

from __future__ import annotations

import io
from pathlib import Path

import torch


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def read_pointer(folder: Path, name: str) -> str | None:
    """The checkpoint name a pointer file (layout.LATEST, layout.BEST) holds, or None."""
    file = Path(folder) / name
    return (file.read_text().strip() or None) if file.is_file() else None
