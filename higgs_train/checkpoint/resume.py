"""Find the newest checkpoint that passes verification, clean leftovers of interrupted saves, load state back."""

from __future__ import annotations

import json
import pickle  # for its exception type: nothing here is unpickled beyond tensors
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.io import remove_tree
from higgs_train.checkpoint.state import TrainingProgress, load_weights_only, read_rng
from higgs_train.checkpoint.verify import VerifyResult, verify_checkpoint
from higgs_train.errors import CheckpointError

# Settings that shape the adapter: resuming with another value would load weights into the wrong model. The base
# model is compared by its weights (check_same_base), not by the path or hub id that named it.
SHAPING_FIELDS = ("lora_r", "lora_targets")


def list_checkpoints(root: str | Path) -> list[Path]:
    """Published checkpoint folders under `root`, newest step first (tmp folders excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(layout.parse_step(p.name), p) for p in root.iterdir() if p.is_dir()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)[::-1]]


def clean_stale(root: str | Path, log: Callable[[str], None] = print) -> list[Path]:
    """Remove the tmp folders of saves (and deletions) that never finished; log each one."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.is_dir() and layout.is_tmp(p.name):
                log(f"removing {p.name}: left by an interrupted save")
                remove_tree(p)
                removed.append(p)
    return removed


def find_resume_point(
    roots: list[Path], log: Callable[[str], None] = print
) -> tuple[VerifyResult | None, list[VerifyResult]]:
    """The newest valid checkpoint across `roots` (the output folder, then a fallback folder).

    Returns:
        (the chosen result or None, the newer candidates that were skipped with their reasons).
    """
    candidates = sorted(
        (p for root in roots for p in list_checkpoints(root)),
        key=lambda p: layout.parse_step(p.name),
        reverse=True,
    )
    skipped = []
    for path in candidates:
        result = verify_checkpoint(path)
        if result.ok:
            return result, skipped
        log(f"skipping {path}: {'; '.join(result.problems)}")
        skipped.append(result)
    return None, skipped


@dataclass
class LoadedCheckpoint:
    path: Path
    kind: str
    progress: TrainingProgress
    config: dict[str, Any]
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None
    rng: dict[str, Any] | None  # this rank's RNG, None when the checkpoint has no file for it
    model_fingerprint: str | None = None  # the base weights it was trained on (absent before 0.2)


def load_checkpoint(path: str | Path, rank: int = 0) -> LoadedCheckpoint:
    """Read everything back from a verified checkpoint folder; nothing in it can run code (see `state.read_rng`)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = json.loads((path / layout.TRAINER_STATE).read_text())
        adapter = load_file(str(path / layout.ADAPTER_WEIGHTS))
        full = state["kind"] == layout.KIND_FULL

        def opt(name: str):
            file = path / name
            return load_weights_only(file) if full and file.exists() else None

        return LoadedCheckpoint(
            path=path,
            kind=state["kind"],
            progress=TrainingProgress.from_dict(state["progress"]),
            config=state["config"],
            adapter=adapter,
            optimizer=opt(layout.OPTIMIZER),
            scheduler=opt(layout.SCHEDULER),
            scaler=opt(layout.SCALER),
            rng=rng_for_rank(path, rank) if full else None,
            model_fingerprint=state.get("model_fingerprint"),
        )
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: cannot load the checkpoint ({type(e).__name__}: {e})") from e


def rng_for_rank(path: Path, rank: int) -> dict[str, Any] | None:
    """This rank's RNG states, or None when the checkpoint holds none for it (saved with fewer processes)."""
    for name in (layout.rng_file(rank), layout.legacy_rng_file(rank)):
        if (path / name).exists():
            return read_rng(path / name)
    return None


def same_source(a: str | None, b: str | None) -> bool:
    """Whether two --model values name the same thing: local paths compare resolved (./tiny == /abs/tiny)."""
    if a is None or b is None:
        return a == b
    return (Path(a).resolve() == Path(b).resolve()) if Path(a).exists() or Path(b).exists() else a == b


def check_same_base(loaded: LoadedCheckpoint, model: str, fingerprint: str) -> None:
    """Refuse a checkpoint trained on other base weights: by the weights' fingerprint when the checkpoint has one,
    else (checkpoints from before 0.2) by the normalised --model path.

    Raises:
        CheckpointError: naming both, and the fixes.
    """
    saved = loaded.model_fingerprint
    same = saved == fingerprint if saved else same_source(loaded.config.get("model"), model)
    if not same:
        raise CheckpointError(
            f"{loaded.path} was trained on other base weights (--model {loaded.config.get('model')!r}, "
            f"weights {saved or 'unknown'}) than this run's --model {model!r} (weights {fingerprint}); pass the "
            "base model it was trained on, another --output_dir, or --resume never"
        )


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> list[str]:
    """Refuse a checkpoint trained on another base model or LoRA shape; list other differences as warnings."""
    for name in SHAPING_FIELDS:
        if saved.get(name) != current.get(name):
            raise CheckpointError(
                f"{path} was trained with --{name} {saved.get(name)!r} but this run has {current.get(name)!r}; "
                f"pass the same --{name}, another --output_dir, or --resume never"
            )
    ignore = {
        "model",
        "audio_tokenizer",
        "train_manifest",
        "eval_manifest",
        "score_manifest",
        "resume",
        "max_steps",
        "num_epochs",
        "save_steps",
        "save_total_limit",
        "output_dir",
        "fallback_dir",
    }
    return [
        f"--{name}: checkpoint has {saved[name]!r}, this run uses {current[name]!r}"
        for name in sorted(current)
        if name in saved and name not in ignore and saved[name] != current[name]
    ]
