"""Identity by content, never by path: what a clip or a model holds decides whether it is the same.

A clip is known by the sha256 of its bytes, read again only when its stat changes (`FileDigests`); a model by a
sample of its weights, so the same model reached as `./tiny` or by its absolute path keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from higgs_train.files import atomic_write_text, sha256_file


class FileDigests:
    """sha256 of files, remembered in a JSON file by (size, mtime, ctime, inode): a file is read again only when one
    of them changes. A rewrite in place always changes ctime, which no tool can set back, so a memo never hides
    new content; a copy elsewhere is read once and, having the same bytes, keeps its key."""

    def __init__(self, memo: Path):
        self.memo = Path(memo)
        try:
            self._known: dict[str, str] = json.loads(self.memo.read_text())
        except (OSError, ValueError):
            self._known = {}
        self._changed = False

    def __call__(self, path: str | Path) -> str:
        st = os.stat(path)
        stamp = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
        if stamp not in self._known:
            self._known[stamp] = sha256_file(path)
            self._changed = True
        return self._known[stamp]

    def save(self) -> None:
        """Best effort: without the memo the next start reads the files again, nothing worse."""
        if self._changed:
            try:
                self.memo.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.memo, json.dumps(self._known))
            except OSError:
                pass


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
