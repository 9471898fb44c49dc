"""Several processes through accelerate: the launcher guard, bounded collectives, agreement between ranks.

Everything here also runs with one process, where each collective is the identity.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shlex
from pathlib import Path
from typing import Any

import torch

from higgs_train.config import TrainConfig
from higgs_train.errors import CheckpointError, ConfigError
from higgs_train.files import sha256_file


def requested_processes() -> int | None:
    """How many processes the launcher was asked for: WORLD_SIZE under torchrun, else read from the parent
    `accelerate launch` command line (whose `--num_processes 2 --cpu` silently starts one process)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    try:
        import psutil

        argv = psutil.Process().parent().cmdline()
    except Exception:  # no parent to read (containers, permissions): nothing to compare against
        return None
    line = shlex.join(argv)
    if "accelerate" not in line or " launch" not in line:
        return None
    match = re.search(r"--num[_-]processes[= ](\d+)", line)
    if match:
        return int(match.group(1))
    config = re.search(r"--config[_-]file[= ](\S+)", line)
    if config and Path(config.group(1)).is_file():
        import yaml

        return int((yaml.safe_load(Path(config.group(1)).read_text()) or {}).get("num_processes", 1))
    return None


def make_accelerator(cfg: TrainConfig):
    """An Accelerator on the GPUs, or on the CPU with gloo when there is none, with bounded collectives.

    Raises:
        ConfigError: fp16 without a GPU, or fewer processes joined than the launcher was asked for.
    """
    from accelerate.utils import InitProcessGroupKwargs

    cpu = not torch.cuda.is_available()
    if cpu and cfg.mixed_precision == "fp16":
        raise ConfigError("--mixed_precision fp16 needs a GPU; use bf16 or no on the CPU")
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.dist_timeout_s))
    accelerator = _new_accelerator(cfg, cpu, timeout)
    if accelerator.distributed_type.value == "FSDP" and not accelerator.is_fsdp2:
        raise ConfigError(
            "the accelerate config asks for FSDP version 1, which higgs-train does not support; set "
            "fsdp_version: 2 (configs/accelerate/fsdp.yaml)"
        )
    asked = requested_processes()
    if asked is not None and asked != accelerator.num_processes:
        raise ConfigError(
            f"the launcher was asked for {asked} processes but {accelerator.num_processes} joined the run; on a "
            f"machine without GPU use `accelerate launch --multi_gpu --num_processes {asked}` (gloo on the CPU)"
        )
    if accelerator.num_processes > 1 and not cpu:
        # Stop requests and label counts are host numbers: agreeing on them over NCCL would need device tensors
        # and a sync of the CUDA stream at every micro-batch; a gloo group beside it needs neither.
        accelerator.control_group = torch.distributed.new_group(backend="gloo", timeout=timeout.timeout)
    return accelerator


def _new_accelerator(cfg: TrainConfig, cpu: bool, timeout):
    """The Accelerator itself. (tests/shard_on_cpu.py replaces this to run FSDP and DeepSpeed on the CPU.)"""
    from accelerate import Accelerator

    sharded = [name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "").lower() == "true"]
    if cpu and sharded:
        # accelerate would silently run plain data parallel on the CPU instead: say so rather than switch
        raise ConfigError(
            f"the accelerate config asks for {sharded[0]}, which needs GPUs; on a machine without GPU use "
            "configs/accelerate/cpu2.yaml (data parallel with gloo)"
        )
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu, kwargs_handlers=[timeout])


def _all_reduce(accelerator, value: torch.Tensor, op) -> torch.Tensor:
    """Reduce a CPU tensor over the control group (the default group, gloo, on the CPU): no device round trip."""
    torch.distributed.all_reduce(value, op=op, group=getattr(accelerator, "control_group", None))
    return value


def any_rank(accelerator, flag: bool) -> bool:
    """True on every rank when it is true on any (e.g. a signal that reached one rank)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(_all_reduce(accelerator, torch.tensor([int(flag)]), torch.distributed.ReduceOp.MAX).item())


def global_sum(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    return float(_all_reduce(accelerator, torch.tensor([value], dtype=torch.float64), torch.distributed.ReduceOp.SUM))


def from_main(accelerator, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def adapter_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_replicas(digests: list[str], step: int) -> None:
    """Every rank must hold the same adapter; a mismatch means gradients were not averaged.

    Raises:
        CheckpointError: naming the ranks that differ from rank 0.
    """
    differ = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise CheckpointError(
            f"adapter replicas differ at step {step}: rank(s) {differ} do not match rank 0 "
            f"({', '.join(f'rank {r}: {d}' for r, d in enumerate(digests))}); gradients are not being averaged "
            "across processes, so nothing was saved"
        )


def main_only(accelerator, fn, *args, **kwargs) -> Any:
    """Run `fn` on rank 0 alone and return its value there (None on the other ranks, which never see it: an
    object that holds a lock, a tracker or a model stays where it was made); its error is raised on every rank."""
    box = []
    on_main(accelerator, lambda: box.append(fn(*args, **kwargs)))
    return box[0] if box else None


def on_main(accelerator, fn, *args, **kwargs) -> Any:
    """Run `fn` on rank 0 and give every rank its value, or raise its error on every rank (so no rank is left
    waiting at a collective for a writer that failed)."""
    outcome: tuple[str, Any] = ("ok", None)
    if accelerator.is_main_process:
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except Exception as e:  # carried to every rank and re-raised there
            outcome = ("error", e)
    kind, value = from_main(accelerator, outcome)
    if kind == "error":
        raise value
    return value


def check_same_settings(accelerator, settings: dict[str, Any], what: str = "settings") -> None:
    """Every process must train with the same settings, data and base model (ranks started with different commands
    would cut different batch plans and run on): compare each rank's with rank 0's.

    Raises:
        ConfigError: on every rank, naming the fields that differ, the ranks and both values of the first.
    """
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    everyone = gather_object([settings])
    first = everyone[0]
    differ = sorted({k for other in everyone[1:] for k in set(first) | set(other) if other.get(k) != first.get(k)})
    if differ:
        ranks = [r for r, other in enumerate(everyone) if other != first]
        name = differ[0]
        example = next(other for other in everyone[1:] if other.get(name) != first.get(name))
        raise ConfigError(
            f"the processes were started with different {what}: {', '.join(differ)} differ between rank 0 and "
            f"rank(s) {ranks} (e.g. {name}: {first.get(name)!r} on rank 0, {example.get(name)!r} on rank "
            f"{everyone.index(example)}); start every process with the same command and files"
        )


def peer_failure(e: BaseException) -> bool:
    """Whether an error means another process stopped answering or died (gloo reports a timed-out peer as a plain
    RuntimeError, NCCL as a DistError)."""
    text = str(e).lower()
    signs = ("timed out", "timeout", "connection closed by peer", "connection reset by peer", "broken pipe")
    return isinstance(e, torch.distributed.DistError) or any(s in text for s in signs)


def settings_identity(cfg) -> dict[str, Any]:
    """The settings every process must share, with the manifests' content (not only their paths)."""

    values = {f"--{k}": v for k, v in cfg.to_dict().items()}
    for flag in ("train_manifest", "eval_manifest"):
        path = Path(getattr(cfg, flag) or "")
        if path.is_file():
            values[f"{flag} content"] = sha256_file(path)
    return values
