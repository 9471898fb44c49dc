"""Find the newest checkpoint that passes verification, clean leftovers of interrupted saves, load state back."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.io import remove_tree
from higgs_train.checkpoint.state import TrainingProgress
from higgs_train.checkpoint.verify import VerifyResult, verify_checkpoint
from higgs_train.errors import CheckpointError

# Settings that shape the adapter: resuming with another value would load weights into the wrong model.
SHAPING_FIELDS = ("model", "lora_r", "lora_targets")


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


def load_checkpoint(path: str | Path, rank: int = 0) -> LoadedCheckpoint:
    """Read everything back from a verified checkpoint folder."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = json.loads((path / layout.TRAINER_STATE).read_text())
        adapter = load_file(str(path / layout.ADAPTER_WEIGHTS))
        full = state["kind"] == layout.KIND_FULL

        def opt(name: str, weights_only: bool = True):
            file = path / name
            if not (full and file.exists()):
                return None
            return torch.load(file, map_location="cpu", weights_only=weights_only)

        return LoadedCheckpoint(
            path=path,
            kind=state["kind"],
            progress=TrainingProgress.from_dict(state["progress"]),
            config=state["config"],
            adapter=adapter,
            optimizer=opt(layout.OPTIMIZER),
            scheduler=opt(layout.SCHEDULER),
            scaler=opt(layout.SCALER),
            # RNG states hold numpy and python objects that weights_only refuses; the file passed verification.
            rng=opt(layout.rng_file(rank), weights_only=False),
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot load the checkpoint ({type(e).__name__}: {e})") from e


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> list[str]:
    """Refuse a checkpoint trained on another base model or LoRA shape; list other differences as warnings."""
    for name in SHAPING_FIELDS:
        if saved.get(name) != current.get(name):
            raise CheckpointError(
                f"{path} was trained with --{name} {saved.get(name)!r} but this run has {current.get(name)!r}; "
                f"pass the same --{name}, another --output_dir, or --resume never"
            )
    ignore = {
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
