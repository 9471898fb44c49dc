"""Identity by content, never by path: what a clip, a model or a cache shard holds decides whether it is the same.

A clip rewritten in place (same size, mtime restored) gets a new digest; the same model reached as `./tiny` or by
its absolute path keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (audio files are small next to their decoding cost)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_fingerprint(module: torch.nn.Module, samples: int = 4096) -> str:
    """A cheap fingerprint of a model's weights: names, shapes and an evenly spaced sample of each tensor's values,
    rounded to bfloat16 so that loading in another --mixed_precision keeps it. Other weights at the same path
    change it; the path never does."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(module.state_dict().items()):
            if t.device.type == "meta":
                continue
            flat = t.detach().reshape(-1)
            picked = flat[:: max(1, flat.numel() // samples)].to(torch.bfloat16).float().cpu()
            digest.update(f"{name}|{tuple(t.shape)}|".encode())
            digest.update(picked.numpy().tobytes())
    return digest.hexdigest()[:16]
