"""Delete old checkpoints, only after a new one is published, never the newest valid one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.io import read_pointer
from higgs_train.checkpoint.resume import list_checkpoints
from higgs_train.files import fsync_dir, remove_tree


def rotate(root: str | Path, keep: int, newest: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Keep the `keep` newest checkpoints in `root`; `newest` (just published and verified) and the one the
    `best` pointer names are always kept.

    A folder is first renamed to a tmp name and then removed, so a crash mid-delete never leaves a
    half-deleted folder under a published name.
    """
    root = Path(root)
    protected = {newest.resolve()}
    if best := read_pointer(root, layout.BEST):
        protected.add((root / best).resolve())
    candidates = [p for p in list_checkpoints(root) if p.resolve() != newest.resolve()][max(keep - 1, 0) :]
    old = [p for p in candidates if p.resolve() not in protected]
    for path in old:
        doomed = root / f"{path.name}{layout.TMP_MARK}delete-{secrets.token_hex(2)}"
        os.rename(path, doomed)
        fsync_dir(root)
        problem = remove_tree(doomed)
        if problem:  # unpublished already (renamed to a tmp name): the next start removes what is left
            log(f"warning: {path.name} is unpublished but not fully deleted: {problem}; removed at the next start")
        else:
            log(f"deleted {path.name} (--save_total_limit {keep})")
    return old
