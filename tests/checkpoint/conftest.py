import pytest
import torch

from higgs_train.checkpoint.state import Snapshot, TrainingProgress, capture_rng


def make_snapshot(step: int, seed: int = 0, adapter=None) -> Snapshot:
    gen = torch.Generator().manual_seed(seed)
    if adapter is None:
        adapter = {
            f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{ab}.weight": torch.randn(
                *((4, 16) if ab == "A" else (16, 4)), generator=gen
            )  # A: (r, in), B: (out, r)
            for i in range(2)
            for ab in "AB"
        }
    params = [torch.nn.Parameter(t.clone()) for t in adapter.values()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return Snapshot(
        progress=TrainingProgress(step=step, micro_batches=step, samples_seen=step),
        adapter=adapter,
        adapter_config={"peft_type": "LORA", "r": 4, "target_modules": {"q_proj"}},
        config={"model": "tiny", "lora_r": 4},
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        rng={0: capture_rng()},
    )


@pytest.fixture
def snapshot_factory():
    return make_snapshot
