"""The guarded save: write into checkpoint-N.tmp-XXXX, fsync, verify from disk, then publish by rename.

If the full save fails, a smaller fallback (adapter weights alone, written by a different code path) is tried;
if that fails too, the partial folder goes to OUTPUT_DIR/.failed/ with the error and the last good checkpoint
is untouched. A folder named checkpoint-N only ever appears through the final rename.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.io import torch_bytes
from higgs_train.checkpoint.preflight import check_free_space
from higgs_train.checkpoint.state import Snapshot, rng_to_tensors, stream_bytes
from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.errors import CheckpointError
from higgs_train.faults import count, failpoint
from higgs_train.files import atomic_write_text, fsync_dir, fsync_file, remove_tree, write_bytes


class StepExistsError(CheckpointError):
    """A valid checkpoint of this step exists already; it is never overwritten."""


@dataclass
class SaveResult:
    step: int
    path: Path | None  # the published folder, None when nothing was published
    kind: str | None  # layout.KIND_FULL, layout.KIND_FALLBACK or None (failed)
    seconds: float
    error: str | None = None  # why the full save failed (set for a fallback too)

    @property
    def ok(self) -> bool:
        return self.path is not None


def estimate_bytes(snapshot: Snapshot) -> int:
    """Upper estimate of a full checkpoint's size: the tensors it holds plus 10%."""

    def tensor_bytes(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(tensor_bytes(v) for v in obj.values())
        if isinstance(obj, list | tuple):
            return sum(tensor_bytes(v) for v in obj)
        return 0

    total = tensor_bytes(snapshot.adapter) + tensor_bytes(snapshot.optimizer)
    return int(total * 1.1) + (1 << 20)


def save_checkpoint(
    output_dir: str | Path,
    snapshot: Snapshot,
    *,
    fallback_dir: str | Path | None = None,
    min_free_disk_gb: float = 0.0,
    deadline: float | None = None,
) -> SaveResult:
    """Save `snapshot` as OUTPUT_DIR/checkpoint-STEP, or a fallback, or nothing (with the reason).

    Never raises for a failed write: the result says what was published. With `deadline` (a stop-save), what is
    published by then: see _save_by_deadline.

    Raises:
        StepExistsError: a valid checkpoint of the same step exists (a committed step is never overwritten).
    """
    output_dir = Path(output_dir)
    start = time.perf_counter()
    step = snapshot.progress.step
    count("save", step)
    if deadline is not None:
        result = _save_by_deadline(output_dir, snapshot, deadline, start, min_free_disk_gb)
        if result is not None:
            return result  # else the adapter could not even be staged: the usual path, with its fallback folder
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        check_free_space(output_dir, estimate_bytes(snapshot), min_free_disk_gb)
        path = _publish(output_dir, snapshot, layout.KIND_FULL, _full_files)
        return SaveResult(step, path, layout.KIND_FULL, time.perf_counter() - start)
    except StepExistsError:
        raise
    except Exception as e:  # an OS, serialisation or validation error: fall back, never lose the step silently
        error = f"{type(e).__name__}: {e}"
    target = Path(fallback_dir) if fallback_dir else output_dir
    try:
        target.mkdir(parents=True, exist_ok=True)
        path = _publish(target, snapshot, layout.KIND_FALLBACK, _fallback_files)
        return SaveResult(step, path, layout.KIND_FALLBACK, time.perf_counter() - start, error)
    except Exception as e:
        error = f"{error}; the adapter-only fallback failed too: {type(e).__name__}: {e}"
        return SaveResult(step, None, None, time.perf_counter() - start, error)


def _publish(root: Path, snapshot: Snapshot, kind: str, write_files) -> Path:
    final = root / layout.checkpoint_name(snapshot.progress.step)
    _make_room(final, root)
    _commit(_stage(root, final, snapshot, kind, write_files), final, root)
    return final


def _stage(root: Path, final: Path, snapshot: Snapshot, kind: str, write_files) -> Path:
    """Write `final`'s files into a fresh tmp sibling, fsync and verify them from disk; the tmp folder is returned
    unpublished (or moved to .failed/ on any error)."""
    tmp = root / f"{final.name}{layout.TMP_MARK}{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        failpoint("before_write")
        write_files(tmp, snapshot, kind)  # writes the integrity manifest last
        fsync_dir(tmp)
        result = verify_checkpoint(tmp, expected_adapter=snapshot.adapter, unpublished=True)
        if not result.ok:
            raise CheckpointError("post-save validation failed: " + "; ".join(result.problems))
    except BaseException as e:
        _move_aside(tmp, root, e)
        raise
    return tmp


def _commit(tmp: Path, final: Path, root: Path) -> None:
    """Publish a staged folder: one rename, then `latest`."""
    try:
        failpoint("before_rename")
        os.rename(tmp, final)
        fsync_dir(root)
        failpoint("after_rename")
    except BaseException as e:
        _move_aside(tmp, root, e)
        raise
    atomic_write_text(root / layout.LATEST, final.name + "\n")


class _PublishOnce:
    """Of a stop-save's two staged folders (adapter-only, full), the first claimed and committed is published."""

    def __init__(self, final: Path, root: Path):
        self.final, self.root = final, root
        self.winner: str | None = None
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def claim(self, kind: str, tmp: Path) -> bool:
        with self._lock:
            if self.winner is not None:
                return False
            try:
                _commit(tmp, self.final, self.root)
            except Exception as e:  # moved aside by _commit; the other folder may still be published
                self.errors.append(f"publishing the {kind} checkpoint failed: {type(e).__name__}: {e}")
                return False
            self.winner = kind
            return True


def _save_by_deadline(
    output_dir: Path, snapshot: Snapshot, deadline: float, start: float, min_free_disk_gb: float
) -> SaveResult | None:
    """A stop-save that must be published by `deadline` (time.monotonic()): a launcher kills the process at the end of
    its grace period. The adapter alone is written and verified first (a tenth of the bytes), then the full
    checkpoint in a writer thread; if that is not published by the deadline, the adapter-only folder is, this
    returns at once (so the run still stops cleanly, exit 130 and STOPPED) and the full folder is dropped. None when
    the adapter alone could not be written."""
    step = snapshot.progress.step
    final = output_dir / layout.checkpoint_name(step)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        _make_room(final, output_dir)
        adapter_tmp = _stage(output_dir, final, snapshot, layout.KIND_FALLBACK, _fallback_files)
    except StepExistsError:
        raise
    except Exception:
        return None
    once = _PublishOnce(final, output_dir)

    def write_full() -> None:
        try:
            check_free_space(output_dir, estimate_bytes(snapshot), min_free_disk_gb)
            tmp = _stage(output_dir, final, snapshot, layout.KIND_FULL, _full_files)
        except Exception as e:
            once.errors.append(f"{type(e).__name__}: {e}")
            return
        if not once.claim(layout.KIND_FULL, tmp):
            remove_tree(tmp)  # too late: the adapter-only folder is published

    writer = threading.Thread(target=write_full, name="stop-save", daemon=True)
    writer.start()
    writer.join(timeout=max(0.0, deadline - time.monotonic()))
    if not once.claim(layout.KIND_FALLBACK, adapter_tmp):
        remove_tree(adapter_tmp)
    seconds = time.perf_counter() - start
    if once.winner == layout.KIND_FULL:
        return SaveResult(step, final, layout.KIND_FULL, seconds)
    errors = "; ".join(once.errors)
    if once.winner is None:
        return SaveResult(step, None, None, seconds, errors)
    late = "the full save was not done within --stop_save_s of the stop signal"
    return SaveResult(step, final, layout.KIND_FALLBACK, seconds, errors or late)


def _make_room(final: Path, root: Path) -> None:
    """A valid checkpoint of this step is never overwritten; an invalid leftover is moved to .failed/."""
    if not final.exists():
        return
    result = verify_checkpoint(final)
    if result.ok:
        raise StepExistsError(f"refusing to overwrite {final}: it is a valid checkpoint of the same step")
    _move_aside(final, root, CheckpointError("replaced an invalid leftover: " + "; ".join(result.problems)))


def _move_aside(path: Path, root: Path, error: BaseException) -> None:
    if not path.exists():
        return
    failed = root / layout.FAILED_DIR
    try:
        failed.mkdir(exist_ok=True)
        dest = failed / f"{path.name}-{int(time.time())}-{secrets.token_hex(2)}"
        os.rename(path, dest)
    except OSError:
        remove_tree(path)
        return
    try:
        (dest / layout.ERROR_NOTE).write_text(f"{type(error).__name__}: {error}\n")
    except OSError:
        pass  # best effort: on a full disk the note itself may not fit; the error is reported to the caller anyway


def _trainer_state(snapshot: Snapshot, kind: str) -> bytes:
    state = {
        "kind": kind,
        "progress": snapshot.progress.to_dict(),
        "config": snapshot.config,
        "memory": snapshot.memory,
        "model_fingerprint": snapshot.model_fingerprint,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return json.dumps(state, indent=2, default=str).encode()


def _adapter_config_bytes(snapshot: Snapshot) -> bytes:
    return json.dumps(snapshot.adapter_config, indent=2, sort_keys=True, default=_jsonable).encode()


def _jsonable(value):
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def _manifest(tmp: Path, kind: str, step: int, files: dict[str, bytes] | list[str]) -> dict:
    import hashlib

    entries = {}
    for name in files:
        data = files[name] if isinstance(files, dict) else (tmp / name).read_bytes()
        entries[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return {"kind": kind, "step": step, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": entries}


def _full_files(tmp: Path, snapshot: Snapshot, kind: str) -> None:
    from safetensors.torch import save as safetensors_bytes

    files = {
        layout.ADAPTER_WEIGHTS: safetensors_bytes(snapshot.adapter, metadata={"format": "pt"}),
        layout.ADAPTER_CONFIG: _adapter_config_bytes(snapshot),
        layout.OPTIMIZER: torch_bytes(snapshot.optimizer),
        layout.SCHEDULER: torch_bytes(snapshot.scheduler),
        layout.TRAINER_STATE: _trainer_state(snapshot, kind),
    }
    if snapshot.scaler is not None:
        files[layout.SCALER] = torch_bytes(snapshot.scaler)
    for rank, rng in snapshot.rng.items():
        tensors, metadata = rng_to_tensors(rng)
        files[layout.rng_file(rank)] = safetensors_bytes(tensors, metadata=metadata)
    for rank, state in snapshot.streams.items():
        files[layout.stream_file(rank)] = stream_bytes(state)
    for name, data in files.items():
        write_bytes(tmp / name, data)
    manifest = _manifest(tmp, kind, snapshot.progress.step, files)
    write_bytes(tmp / layout.INTEGRITY, json.dumps(manifest, indent=2).encode())


def _fallback_files(tmp: Path, snapshot: Snapshot, kind: str) -> None:
    """Adapter weights alone, written by safetensors' and Python's own file writers from fresh CPU copies, so a
    fault in the full save's writer (write_bytes) or serialisation (in-memory buffers) does not repeat here."""
    from safetensors.torch import save_file

    adapter = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in snapshot.adapter.items()}
    save_file(adapter, str(tmp / layout.ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (tmp / layout.ADAPTER_CONFIG).write_bytes(_adapter_config_bytes(snapshot))
    (tmp / layout.TRAINER_STATE).write_bytes(_trainer_state(snapshot, kind))
    names = [layout.ADAPTER_WEIGHTS, layout.ADAPTER_CONFIG, layout.TRAINER_STATE]
    manifest = _manifest(tmp, kind, snapshot.progress.step, names)
    (tmp / layout.INTEGRITY).write_text(json.dumps(manifest, indent=2))
    for name in [*names, layout.INTEGRITY]:
        fsync_file(tmp / name)
