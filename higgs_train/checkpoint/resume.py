"""Resume, end to end: choose the checkpoint (--resume auto, never or PATH), clean leftovers of interrupted saves,
check it fits this run, and put adapter, optimizer, scaler, schedule, RNG and data position back."""

from __future__ import annotations

import json
import pickle  # for its exception type: nothing here is unpickled beyond tensors
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.state import TrainingProgress, load_weights_only, read_rng, read_stream, restore_rng
from higgs_train.checkpoint.verify import VerifyResult, verify_checkpoint
from higgs_train.config import MAY_CHANGE, SHAPES, fields_where
from higgs_train.data.rows import comparable, describe_change
from higgs_train.errors import CheckpointError, ConfigError
from higgs_train.files import remove_tree
from higgs_train.layouts import looks_local
from higgs_train.sharded import load_optimizer_state

# Settings that shape the adapter: resuming with another value would load weights into the wrong model. The base
# model is compared by its weights (check_same_base), not by the path or hub id that named it.
SHAPING_FIELDS = fields_where("resume", SHAPES)  # lora_r, lora_targets, quantize
UNRECORDED = {"quantize": "none"}  # what a checkpoint from before a shaping field existed was trained with


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
            if p.is_file() and p.name.startswith(".") and layout.TMP_MARK in p.name:  # an atomic write cut short
                p.unlink(missing_ok=True)
            elif p.is_dir() and layout.is_tmp(p.name):
                problem = remove_tree(p)
                note = f"; not removed: {problem}" if problem else ""
                log(f"removing {p.name}: left by an interrupted save{note}")
                removed.append(p)
    return removed


def valid_checkpoints(paths: list[Path], say: Callable[[str], None] = print) -> Iterator[VerifyResult]:
    """The checkpoints among `paths` that pass verification, in order; each one that fails is logged with why."""
    for path in paths:
        result = verify_checkpoint(path)
        if result.ok:
            yield result
        else:
            say(f"skipping {path}: {'; '.join(result.problems)}")


def find_resume_point(roots: list[Path], say: Callable[[str], None] = print) -> VerifyResult | None:
    """The newest valid checkpoint across `roots` (the output folder, then a fallback folder), or None."""
    candidates = sorted(
        (p for root in roots for p in list_checkpoints(root)),
        key=lambda p: layout.parse_step(p.name),
        reverse=True,
    )
    return next(valid_checkpoints(candidates, say), None)


def read_trainer_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json: kind, progress, config, memory, model fingerprint."""
    return json.loads((Path(path) / layout.TRAINER_STATE).read_text())


def attach_adapter(model, source: str | Path, flag: str = "--adapter"):
    """The base model wrapped with the adapter at `source` (a checkpoint folder, its adapter files, or a hub id),
    for inference: the LoRA config from its adapter_config.json, the weights through `load_adapter_weights`.

    Raises:
        CheckpointError: the adapter cannot be read (a local folder that is gone, say, by rotation), or lacks
            tensors.
    """
    from peft import LoraConfig, PeftModel
    from safetensors.torch import load_file
    from transformers.utils import cached_file

    if looks_local(source) and not Path(source).is_dir():
        raise CheckpointError(f"{flag} {source}: no such folder (removed, or rotated away by a running training)")
    try:
        config = LoraConfig.from_pretrained(str(source))
        config.inference_mode = True
        weights = cached_file(str(source), layout.ADAPTER_WEIGHTS)
        wrapped = PeftModel(model, config)
        load_adapter_weights(wrapped, load_file(weights), source)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{flag} {source}: cannot load the adapter ({str(e).splitlines()[0]})") from e
    return wrapped


def load_adapter_weights(model, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Put an adapter's tensors into a PEFT model, refusing one that lacks any LoRA tensor the model has.

    Raises:
        CheckpointError: naming the first missing tensor, or a tensor of another shape.
    """
    from peft import set_peft_model_state_dict

    try:
        outcome = set_peft_model_state_dict(model, tensors)
    except RuntimeError as e:  # torch's size mismatch: another LoRA shape than the settings say
        reason = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{source}: the adapter does not fit this model ({reason})") from e
    missing = [k for k in outcome.missing_keys if "lora_" in k]
    if missing:
        raise CheckpointError(f"{source}: adapter lacks {len(missing)} LoRA tensors, e.g. {missing[0]}")


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
    stream: tuple | None = None  # --streaming: this rank's stream state (data/stream.py), None without one


def load_checkpoint(path: str | Path, rank: int = 0) -> LoadedCheckpoint:
    """Read everything back from a verified checkpoint folder; nothing in it can run code (see `state.read_rng`)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = read_trainer_state(path)
        if bad := TrainingProgress.problems(state["progress"]):  # checked again: the file may change after verify
            raise ValueError("; ".join(bad[:3]))
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
            stream=read_stream(path / layout.stream_file(rank)) if (path / layout.stream_file(rank)).exists() else None,
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


def check_same_base(loaded: LoadedCheckpoint, model: str, fingerprint: str, commit: str | None = None) -> None:
    """Refuse a checkpoint trained on other base weights: by the weights' fingerprint when the checkpoint has one,
    else (checkpoints from before 0.2) by the normalised --model path. Under the same hub id at another commit
    the repository changed since the run started: both commits are named.

    Raises:
        CheckpointError: naming both, and the fixes.
    """
    saved = loaded.model_fingerprint
    same = saved == fingerprint if saved else same_source(loaded.config.get("model"), model)
    then = loaded.config.get("model_revision")
    if not same and loaded.config.get("model") == model and then and commit and then != commit:
        raise CheckpointError(
            f"{loaded.path}: the repository changed since this run started: --model {model} was commit {then}, "
            f"now commit {commit}, with other weights (fingerprint {saved} then, {fingerprint} now); pass "
            f"--model_revision {then} to resume on the weights it was trained on, or another --output_dir"
        )
    if not same:
        raise CheckpointError(
            f"{loaded.path} was trained on other base weights (--model {loaded.config.get('model')!r}, "
            f"weights {saved or 'unknown'}) than this run's --model {model!r} (weights {fingerprint}); pass the "
            "base model it was trained on, another --output_dir, or --resume never"
        )


def check_lora_shape(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint of another LoRA shape (its weights would not fit this model).

    Raises:
        CheckpointError: naming the setting, both values and the fixes.
    """
    for name in SHAPING_FIELDS:
        then = saved.get(name, UNRECORDED.get(name))
        if then != current.get(name):
            raise CheckpointError(
                f"{path} was trained with --{name} {then!r} but this run has {current.get(name)!r}; "
                f"pass the same --{name}, another --output_dir, or --resume never"
            )


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings that differ from the checkpoint's, as warnings (those a resume may change on purpose, like
    --max_steps or the paths, are left out)."""
    ignore = set(fields_where("resume", MAY_CHANGE))  # declared on the fields (config.py)
    return [
        f"--{name}: checkpoint has {saved[name]!r}, this run uses {current[name]!r}"
        for name in sorted(current)
        if name in saved and name not in ignore and saved[name] != current[name]
    ]


def check_data(path: Path | None, identity, config: dict[str, Any], output_dir) -> str | None:
    """Before the model loads: does the checkpoint at `path` count its data position in other rows than these?
    Returns what changed in words (None: the same rows, or a checkpoint that records none).

    Raises:
        ConfigError: the rows changed and --on_data_change is error.
    """

    saved = TrainingProgress.from_dict(read_trainer_state(path)["progress"]) if path is not None else None
    if saved is None or not comparable(saved.data_digest) or saved.data_digest == identity.digest:
        return None
    what = describe_change(saved.data_digest, saved.data_rows, identity, output_dir)
    if config["on_data_change"] == "error":
        raise ConfigError(
            f"the training data changed since {path.name} was saved: {what}. Its data position counts the old rows; "
            "rerun with --on_data_change restart_epoch (keep the step, optimizer and schedule, start a fresh epoch "
            "order over the new rows) or --on_data_change continue (keep the position as samples seen)"
        )
    return what


def move_data_position(progress: TrainingProgress, identity, change: str | None, choice: str, plan, say) -> None:
    """After a resume on other rows (`change`, from check_data): restart_epoch starts the next epoch's fresh order
    over the new rows, continue keeps the samples seen. Either way the progress then records these rows."""
    if change is not None:
        if choice == "restart_epoch":
            progress.micro_batches = plan.epoch_start(progress.epoch + 1)
        else:
            progress.micro_batches = plan.position_for_samples(progress.samples_seen)
        progress.epoch = plan.epoch_of(progress.micro_batches)
        say(
            f"warning: the training data changed ({change}); --on_data_change {choice}: training goes on from "
            f"epoch {progress.epoch}, micro-batch {progress.micro_batches}"
        )
    progress.data_digest, progress.data_rows = identity.digest, identity.rows


def choose_resume(resume: str, roots: list[Path], say: Callable[[str], None]) -> Path | None:
    """Main process only: clean leftovers of interrupted saves, then pick the checkpoint --resume names.

    Raises:
        CheckpointError: --resume never with checkpoints present, or a --resume PATH that fails verification.
    """
    for root in roots:
        clean_stale(root, say)
    if resume == "never":
        existing = [p for root in roots for p in list_checkpoints(root)]
        if existing:
            raise CheckpointError(
                f"--resume never, but {existing[0].parent} already holds {existing[0].name}; "
                "choose another --output_dir or use --resume auto"
            )
        return None
    if resume == "auto":
        chosen = find_resume_point(roots, say)
        return chosen.path if chosen else None
    result = verify_checkpoint(resume)
    if not result.ok:
        raise CheckpointError(f"--resume {resume}: {'; '.join(result.problems)}")
    return result.path


def restore_weights(path: Path, config: dict[str, Any], model, fingerprint: str, say, rank: int = 0):
    """Read `path` and put its adapter into the PEFT model, before accelerate wraps or shards it (so every mode
    shards the restored weights). Another base model or LoRA shape is refused here; other changed settings are
    warned about in restore_state, once --batch_size auto is resolved.

    Returns:
        The LoadedCheckpoint, for restore_state once the model and optimizer are prepared.

    Raises:
        CheckpointError: another base model or LoRA shape, or an adapter missing LoRA tensors.
    """
    loaded = load_checkpoint(path, rank)
    check_lora_shape(loaded.config, config, path)  # first: another --quantize also changes the weights' fingerprint
    check_same_base(loaded, config["model"], fingerprint, config.get("model_revision"))
    load_adapter_weights(model, loaded.adapter, path)
    return loaded


def restore_state(loaded: LoadedCheckpoint, config: dict[str, Any], accelerator, model, optimizer, scheduler, say):
    """The rest of a resume, after prepare: warnings for changed settings, optimizer state (gathered form, put back
    in any mode), schedule (this run's --lr and length, `scheduler.jump_to`), data position and each rank's RNG.

    Returns:
        The restored TrainingProgress, its data position recomputed when the world size changed.
    """

    path = loaded.path
    for warning in changed_settings(loaded.config, config):
        say(f"warning: resuming with a changed setting: {warning}")
    progress = loaded.progress
    if loaded.optimizer is not None:
        load_optimizer_state(accelerator, model, optimizer, loaded.optimizer)
        if loaded.scaler is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(loaded.scaler)
    else:
        say(f"warning: {path.name} is an adapter-only fallback: resuming with a fresh optimizer state")
    lr = scheduler.jump_to(progress.step, config["lr"])
    say(
        f"schedule: peak --lr {config['lr']:g}, {scheduler.describe()} (this run's settings); "
        f"step {progress.step + 1} runs at lr {lr:.3e}"
    )
    if progress.data_seed != config["seed"]:
        say(
            f"warning: --seed {config['seed']} differs from the checkpoint's {progress.data_seed}: the checkpoint's "
            "data order is kept"
        )
    if progress.world_size != accelerator.num_processes:
        say(f"warning: saved with {progress.world_size} processes, resuming with {accelerator.num_processes}")
        progress.micro_batches = progress.samples_seen // (config["batch_size"] * accelerator.num_processes)
        progress.world_size = accelerator.num_processes
    elif loaded.rng is not None:
        restore_rng(loaded.rng)  # last, so nothing after it draws from the restored generators
    say(f"resumed from {path} at step {progress.step}")
    return progress
