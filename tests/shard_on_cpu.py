"""Test-only launcher wrapper: run higgs-train with FSDP2 or DeepSpeed on the CPU (gloo), which accelerate does not
do by itself (with `cpu=True` it silently falls back to data parallel). Users never hit this: the real entry point
refuses sharded modes without GPUs. Used as `accelerate launch --config_file ... tests/shard_on_cpu.py ARGS`.

- FSDP2: the shared state is made on the CPU (gloo) and relabelled multi-GPU before the Accelerator is built, so
  accelerate applies `fully_shard` (checked on accelerate 1.15, which pyproject pins for this).
- DeepSpeed: the process group is gloo and `cpu` is left False (True drops DeepSpeed silently); DeepSpeed picks its
  CPU accelerator by itself.
"""

import os

import higgs_train.distributed as distributed


def _new_accelerator(cfg, cpu, timeout):
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        gloo = InitProcessGroupKwargs(backend="gloo", timeout=timeout.timeout)
        return Accelerator(mixed_precision=cfg.mixed_precision, kwargs_handlers=[gloo])
    PartialState(cpu=True, timeout=timeout.timeout)
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=True, kwargs_handlers=[timeout])


distributed._new_accelerator = _new_accelerator

if __name__ == "__main__":
    from higgs_train.cli import main

    main()
