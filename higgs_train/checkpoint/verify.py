"""Is a checkpoint folder complete and intact? One function, used before publishing, on resume and by `verify`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.state import TrainingProgress, load_weights_only, read_rng, read_stream
from higgs_train.files import sha256_file


@dataclass
class VerifyResult:
    path: Path
    step: int | None = None
    kind: str | None = None
    created: str | None = None
    total_bytes: int = 0
    num_tensors: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"{self.path}: valid {self.kind} checkpoint at step {self.step} ({self.num_tensors} adapter tensors)"
        return f"{self.path}: invalid: " + "; ".join(self.problems)


def verify_checkpoint(
    path: str | Path, expected_adapter: dict[str, torch.Tensor] | None = None, unpublished: bool = False
) -> VerifyResult:
    """Check the integrity manifest (every file present, sizes and sha256 equal, nothing extra), the adapter
    (more than 0 tensors, all finite, equal to `expected_adapter` when given), every state file (loads the way
    resume loads it, without running code) and the trainer state (its step matches the folder name). A temporary
    folder of a save in progress is never valid, except to the save itself (`unpublished`), before its rename.
    """
    path = Path(path)
    result = VerifyResult(path, step=layout.parse_step(path.name))
    if not path.is_dir():
        result.problems.append("not a folder")
        return result
    if not unpublished and (layout.is_tmp(path.name) or path.name.startswith(".")):
        result.problems.append("an unfinished save (a temporary folder), never a valid checkpoint")
        return result
    try:
        integrity = json.loads((path / layout.INTEGRITY).read_text())
        files: dict[str, dict] = integrity["files"]
        result.kind = integrity["kind"]
        result.created = integrity.get("created")
    except (OSError, ValueError, KeyError, TypeError) as e:
        result.problems.append(f"{layout.INTEGRITY} missing or unreadable ({type(e).__name__}): not a finished save")
        return result
    if not _files_intact(path, files, result):
        return result
    _check_adapter(path, expected_adapter, result)
    _check_trainer_state(path, result)
    _check_loadable(path, result)
    return result


def _files_intact(path: Path, files: dict[str, dict], result: VerifyResult) -> bool:
    required = [layout.ADAPTER_WEIGHTS, layout.ADAPTER_CONFIG, layout.TRAINER_STATE]
    if result.kind == layout.KIND_FULL:
        required += [layout.OPTIMIZER, layout.SCHEDULER]
    for name in required:
        if name not in files:
            result.problems.append(f"{name} is not listed in {layout.INTEGRITY}")
    entries = list(path.iterdir())
    odd = [p.name for p in entries if p.is_symlink() or not p.is_file()]
    if odd:  # never followed: a link could point anywhere, a folder or device is nothing a save writes
        result.problems.append(f"{_some(odd)} not a regular file (a link, folder or device): refused")
    present = {p.name for p in entries} - set(odd)
    unexpected = sorted(present - set(files) - {layout.INTEGRITY})
    if unexpected:
        result.problems.append(f"unexpected {_some(unexpected)} (not written by the save)")
    for name, meta in files.items():
        file = path / name
        if name in odd:
            continue
        if name not in present or "/" in name or name in (".", ".."):
            result.problems.append(f"{name[:80]} is missing")
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("size"), int):
            result.problems.append(f"{layout.INTEGRITY}: the entry of {name} is malformed")
            continue
        size = file.stat().st_size
        result.total_bytes += size
        if size != meta["size"]:
            result.problems.append(f"{name} has {size} bytes, expected {meta['size']} (truncated or overwritten)")
        elif sha256_file(file) != meta["sha256"]:
            result.problems.append(f"{name} sha256 mismatch (corrupted)")
    return result.ok


def _some(names: list[str], shown: int = 3) -> str:
    """A few names of a list, and how many in all: a message stays one short line however many there are."""
    head = ", ".join(n[:80] for n in names[:shown])
    return f"file {head}" if len(names) == 1 else f"{len(names)} files ({head}{', ...' if len(names) > shown else ''})"


def _check_adapter_config(path: Path, tensors: dict[str, torch.Tensor], result: VerifyResult) -> None:
    """adapter_config.json must describe the tensors beside it: the rank of every LoRA pair and the modules."""
    import re

    try:
        config = json.loads((path / layout.ADAPTER_CONFIG).read_text())
        r, targets = config["r"], config.get("target_modules")
        pattern = config.get("rank_pattern") or {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        result.problems.append(f"{layout.ADAPTER_CONFIG} unreadable ({type(e).__name__})")
        return
    for name, t in tensors.items():
        m = re.search(r"^(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$", name)
        if not m:
            continue
        module, ab = m[1], m[2]
        rank = t.shape[0] if ab == "A" else t.shape[-1]
        want = next((v for k, v in pattern.items() if re.search(k, module)), r)
        if rank != want:
            result.problems.append(f"{layout.ADAPTER_CONFIG} says r={want} but {name} has rank {rank}: tampered")
            return
        leaf = module.rsplit(".", 1)[-1]
        if isinstance(targets, list) and leaf not in targets:
            result.problems.append(f"{layout.ADAPTER_CONFIG} target_modules {targets} do not include {leaf}: tampered")
            return


def _check_adapter(path: Path, expected: dict[str, torch.Tensor] | None, result: VerifyResult) -> None:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path / layout.ADAPTER_WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for malformed headers
        result.problems.append(f"{layout.ADAPTER_WEIGHTS} does not load ({e})")
        return
    result.num_tensors = len(tensors)
    if not tensors:
        result.problems.append(f"{layout.ADAPTER_WEIGHTS} holds 0 tensors: an empty adapter is never valid")
        return
    _check_adapter_config(path, tensors, result)
    bad = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        result.problems.append(f"{len(bad)} adapter tensors hold NaN or Inf, first {bad[0]}")
    if expected is None:
        return
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        result.problems.append(f"adapter names differ from the trainable set: missing {missing[:3]}, extra {extra[:3]}")
        return
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            result.problems.append(
                f"{name}: saved {tuple(got.shape)} {got.dtype}, trained {tuple(want.shape)} {want.dtype}"
            )
        elif not torch.equal(got, want):
            result.problems.append(f"{name}: saved values differ from the trained ones")


def _check_trainer_state(path: Path, result: VerifyResult) -> None:
    try:
        state = json.loads((path / layout.TRAINER_STATE).read_text())
        step = state["progress"]["step"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        result.problems.append(f"{layout.TRAINER_STATE} unreadable ({type(e).__name__})")
        return

    if bad := TrainingProgress.problems(state["progress"]):
        result.problems.append(f"{layout.TRAINER_STATE}: {'; '.join(bad[:3])}")
        return
    if result.step is not None and step != result.step:
        result.problems.append(f"{layout.TRAINER_STATE} says step {step} but the folder is step {result.step}")
    result.step = step


def _check_loadable(path: Path, result: VerifyResult) -> None:
    """Load every state file exactly as resume will (no unpickling beyond tensors): what passes here resumes."""

    for file in sorted(path.iterdir()):
        name = file.name
        try:
            if name == layout.OPTIMIZER:
                state = load_weights_only(file)
                if not isinstance(state, dict) or not {"state", "param_groups"} <= set(state):
                    raise ValueError("no state/param_groups")
            elif name in (layout.SCHEDULER, layout.SCALER):
                load_weights_only(file)
            elif layout.is_rng_file(name):
                read_rng(file)
            elif layout.is_stream_file(name):
                read_stream(file)
        except Exception as e:  # torch.load and safetensors raise many types for a damaged or foreign file
            result.problems.append(f"{name} does not load safely ({type(e).__name__}: {str(e)[:200]})")
