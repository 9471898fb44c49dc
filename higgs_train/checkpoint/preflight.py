"""Before anything is written: can the output folder take it? Used at start-up and before every save."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from higgs_train.errors import OutputDirError

GB = 1024**3


def check_output_dir(path: Path) -> None:
    """Create the folder if needed and prove it is writable with a real write; fail with the fix."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        why = {errno.EROFS: "a read-only file system", errno.EACCES: "no permission", errno.EPERM: "no permission"}.get(
            e.errno, e.strerror
        )
        raise OutputDirError(
            f"--output_dir {path}: cannot write there ({why}); choose a folder you can write to"
        ) from e


def check_free_space(path: Path, needed_bytes: int, margin_gb: float) -> int:
    """Raise OutputDirError unless `needed_bytes` plus the margin fit on the disk holding `path`.

    Returns:
        The free bytes found.
    """
    free = shutil.disk_usage(path).free
    want = needed_bytes + int(margin_gb * GB)
    if free < want:
        raise OutputDirError(
            f"--output_dir {path}: {free / GB:.2f} GB free, a checkpoint needs {needed_bytes / GB:.3f} GB plus "
            f"the {margin_gb} GB margin (--min_free_disk_gb); free some space or lower the margin"
        )
    return free
