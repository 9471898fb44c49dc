"""What FSDP2 and DeepSpeed ZeRO shard, gathered to full tensors for a save and put back at a resume.

A checkpoint holds the same thing whatever wrote it: the PEFT adapter state dict and a plain torch AdamW state dict
(index-keyed in the order of the trainable parameters, full CPU tensors), so a checkpoint written under FSDP2 on 8
GPUs resumes under DDP on one, and the other way round. Only the adapter and its optimizer state are gathered,
never the base weights. Every function here is a collective in the sharded modes: every rank calls it, in step.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from higgs_train.config import AUTO
from higgs_train.errors import ConfigError

PLAIN, FSDP2, ZERO2, ZERO3 = "plain", "fsdp2", "zero2", "zero3"  # zero1 shards like zero2 (optimizer state only)


def sharding(accelerator) -> str:
    """PLAIN (one process or DDP: every rank holds everything), FSDP2, ZERO2 (stage 1 or 2) or ZERO3."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return ZERO3 if accelerator.state.deepspeed_plugin.zero_stage == 3 else ZERO2
    if getattr(accelerator, "is_fsdp2", False):
        return FSDP2
    return PLAIN


@contextlib.contextmanager
def whole_models(accelerator):
    """Load models whole under ZeRO-3: once accelerate registers its DeepSpeed config with transformers (even with
    zero3_init_flag false), every from_pretrained partitions as it loads, which breaks the audio tokenizer and the
    ASR model (never trained) and the weight fingerprint. The trained model is partitioned by prepare instead."""
    plugin = accelerator.state.deepspeed_plugin if sharding(accelerator) == ZERO3 else None
    if plugin is None:
        yield
        return
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    registered = getattr(plugin, "dschf", None)
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if registered is not None:
            set_hf_deepspeed_config(registered)


def check_supported(accelerator, cfg) -> None:
    """What sharded parameters rule out. Samples and scores generate on rank 0 alone, and --batch_size auto tries
    batches per rank: under FSDP2 and ZeRO-3 every forward is a collective of all ranks, so either would hang.

    Raises:
        ConfigError: naming each flag and what to do instead.
    """

    mode = sharding(accelerator)
    if cfg.quantize != "none" and mode != PLAIN:
        raise ConfigError(
            f"--quantize {cfg.quantize} under {mode}: FSDP and DeepSpeed cast or shard the base weights, which "
            "bitsandbytes' quantized weights do not survive (untested, so refused): run QLoRA under DDP "
            "(configs/accelerate/ddp.yaml or multinode.yaml), each GPU holding the whole quantized base"
        )
    if mode not in (FSDP2, ZERO3):
        return
    problems = []
    if cfg.sample_steps or cfg.score_steps:
        problems.append(
            "--sample_steps / --score_steps generate on one process, which sharded parameters cannot: score "
            "the checkpoints after training (`higgs-train score RUN`)"
        )
    if cfg.batch_size == AUTO:
        problems.append("--batch_size auto tries batches per process: give a number (`higgs-train plan` sizes it)")
    if problems:
        name = "FSDP2" if mode == FSDP2 else "ZeRO-3"
        raise ConfigError(f"under {name}: " + "; ".join(problems) + " (or use DDP or ZeRO-2)")


def configure_deepspeed(accelerator, cfg) -> None:
    """DeepSpeed sizes its batch from its own config and no dataloader goes through prepare, so the run's settings
    go in (a ZeRO-2 prepare fails without). Accumulation is 1 in DeepSpeed's eyes: the loop marks each window's
    last micro-batch as the boundary itself (`backward`), so the loss is never divided twice."""
    if sharding(accelerator) not in (ZERO2, ZERO3):
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    micro = cfg.batch_size if isinstance(cfg.batch_size, int) else 1
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = micro * accelerator.num_processes
    ds["gradient_clipping"] = cfg.max_grad_norm


def backward(accelerator, loss: torch.Tensor, last: bool) -> None:
    """Backward for one micro-batch; under DeepSpeed the optimizer steps inside, on the window's last one."""
    engine = getattr(accelerator, "deepspeed_engine_wrapped", None)  # set by prepare under DeepSpeed only
    if engine is not None:
        engine.backward(loss, sync_gradients=last)
    else:
        accelerator.backward(loss)


def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable parameters in module order: the order a plain AdamW state dict numbers them in."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def full_adapter(accelerator, model) -> dict[str, torch.Tensor]:
    """The PEFT adapter state dict as full CPU tensors, on every rank."""
    from peft import get_peft_model_state_dict

    unwrapped = accelerator.unwrap_model(model)
    params = trainable(unwrapped)
    mode = sharding(accelerator)
    if mode in (ZERO2, ZERO3):
        full = {name: _deepspeed_full(p) for name, p in params}
    else:
        full = {name: _full(p) for name, p in params}
    return get_peft_model_state_dict(unwrapped, state_dict=full)


def full_optimizer_state(accelerator, model, optimizer, step: int) -> dict[str, Any] | None:
    """The optimizer state as a plain AdamW state dict of full CPU tensors: on every rank in the sharded modes;
    PLAIN returns None (the caller copies `optimizer.state_dict()` where it writes)."""
    mode = sharding(accelerator)
    if mode == PLAIN:
        return None
    if mode == FSDP2:
        state = optimizer.state_dict()
        return {
            "state": {i: {k: _full(v) for k, v in s.items()} for i, s in state["state"].items()},
            "param_groups": state["param_groups"],
        }
    from deepspeed.utils import safe_get_full_optimizer_state

    params = [p for _, p in trainable(accelerator.unwrap_model(model))]
    state = {}
    for i, p in enumerate(params):
        moments = {k: safe_get_full_optimizer_state(p, k) for k in ("exp_avg", "exp_avg_sq")}
        if all(v is not None for v in moments.values()):
            state[i] = {"step": torch.tensor(float(step))} | {k: v.detach().cpu().float() for k, v in moments.items()}
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    return {"state": state, "param_groups": [group | {"params": list(range(len(params)))}]}


def load_optimizer_state(accelerator, model, optimizer, state: dict[str, Any]) -> None:
    """Put a plain AdamW state dict (from any mode and world size) into this run's optimizer."""
    mode = sharding(accelerator)
    if mode == PLAIN:
        optimizer.load_state_dict(state)
        return
    params = [p for _, p in trainable(accelerator.unwrap_model(model))]
    if mode == FSDP2:
        from torch.distributed.tensor import DTensor, distribute_tensor

        def shard_like(value, p):
            if isinstance(p, DTensor) and torch.is_tensor(value) and value.shape == p.shape:
                return distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
            return value

        sharded = {int(i): {k: shard_like(v, params[int(i)]) for k, v in s.items()} for i, s in state["state"].items()}
        optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})
        return
    from deepspeed.utils import safe_set_full_optimizer_state

    steps = [s["step"] for s in state["state"].values() if "step" in s]
    _materialise_deepspeed_state(accelerator, float(steps[0]) if steps else 0.0)
    for i, p in enumerate(params):
        saved = state["state"].get(i) or state["state"].get(str(i))
        if saved is not None:
            for key in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, saved[key].to(p.device, torch.float32), key)


def _materialise_deepspeed_state(accelerator, step: float) -> None:
    """DeepSpeed's base AdamW (over flat fp32 partitions) creates its state at the first step, and the per-parameter
    views that safe_set_full_optimizer_state writes through exist only then: create both now, at `step`."""
    zero = accelerator.deepspeed_engine_wrapped.engine.optimizer
    base = zero.optimizer
    # ZeRO-3 keeps its flat partitions out of the base optimizer's groups between steps
    flats = getattr(zero, "fp32_partitioned_groups_flat", None) or [p for g in base.param_groups for p in g["params"]]
    for flat in flats:
        entry = base.state[flat]
        entry.setdefault("exp_avg", torch.zeros_like(flat, memory_format=torch.preserve_format))
        entry.setdefault("exp_avg_sq", torch.zeros_like(flat, memory_format=torch.preserve_format))
        entry["step"] = torch.tensor(step)
    link = getattr(zero, "_lazy_init_hp_params_optimizer_state", None)  # ZeRO-1/2 link their views lazily
    if link is not None:
        link()


def _deepspeed_full(p: torch.Tensor) -> torch.Tensor:
    """DeepSpeed's fp32 master copy of a parameter, whole (the bf16 working copy is what it trains from)."""
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(p)
    if full is None:  # before the first step the master copy is not linked yet: gather the parameter itself
        import deepspeed

        with deepspeed.zero.GatheredParameters([p]):
            return p.detach().to("cpu", torch.float32, copy=True)
    return full.detach().to("cpu", copy=True)


def describe(accelerator, model) -> str | None:
    """One line saying what this rank holds of what, so a log (and the tests) can see the sharding is real."""
    mode = sharding(accelerator)
    world = accelerator.num_processes
    params = trainable(accelerator.unwrap_model(model))
    if mode == FSDP2:
        from torch.distributed.tensor import DTensor

        whole = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
        return f"sharding: FSDP2 over {world} processes; this one holds {local:,} of {whole:,} parameter elements"
    if mode == ZERO3:
        whole = sum(p.ds_numel for p in accelerator.unwrap_model(model).parameters())
        local = sum(p.ds_tensor.numel() for p in accelerator.unwrap_model(model).parameters())
        return f"sharding: ZeRO-3 over {world} processes; this one holds {local:,} of {whole:,} parameter elements"
    if mode == ZERO2:
        zero = accelerator.deepspeed_engine_wrapped.engine.optimizer
        local = sum(g.numel() for g in zero.single_partition_of_fp32_groups)
        whole = sum(p.numel() for _, p in params)
        return (
            f"sharding: ZeRO-{accelerator.state.deepspeed_plugin.zero_stage} over {world} processes; this one holds "
            f"{local:,} of {whole:,} optimizer (fp32 master) elements"
        )
    return None


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().to("cpu", copy=True) if torch.is_tensor(t) else t
