"""Before anything is written: can the output folder take it? Used at start-up and before every save."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from higgs_train.errors import ConfigError, OutputDirError

GB = 1024**3


def refuse_overlap(flag: str, output: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """Before anything is written: an output equal to, inside, or holding one of the command's inputs (a model,
    tokenizer, manifest, run or checkpoint folder) would be written over what it reads from.

    Raises:
        ConfigError: naming the output, the input and the fix.
    """
    out = Path(output).expanduser().absolute()
    for name, source in inputs.items():
        if not source or not Path(source).expanduser().exists():
            continue  # a hub id, or nothing given
        path = Path(source).expanduser().absolute()
        if out == path or path in out.parents or out in path.parents:
            where = "is" if out == path else "is inside" if path in out.parents else "holds"
            raise ConfigError(
                f"{flag} {output} {where} {name} {source}; writing there would overwrite what the command reads. "
                f"Choose a {flag} outside it"
            )


def refuse_run_overlap(cfg) -> None:
    """A training run's or prepare's --output_dir and --fallback_dir against everything the run reads."""
    inputs = {
        "--model": cfg.model,
        "--audio_tokenizer": cfg.audio_tokenizer,
        "--train_manifest": cfg.train_manifest,
        "--eval_manifest": cfg.eval_manifest,
        "--score_manifest": cfg.score_manifest,
        "--sample_ref_audio": cfg.sample_ref_audio,
    }
    for flag, output in (("--output_dir", cfg.output_dir), ("--fallback_dir", cfg.fallback_dir)):
        if output:
            refuse_overlap(flag, output, inputs)


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
