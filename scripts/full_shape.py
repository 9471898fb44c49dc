"""Does the released architecture train? The released 3B-base shape with random weights (no download possible):

- the whole depth on the meta device: parameter counts, the LoRA targets the default --lora_targets hit (28 layers
  x 10 projections), trainable parameters, and the size of a full checkpoint (adapter + AdamW state);
- a width-true slice (the released widths, 2 layers) on the CPU: LoRA r=16 on the default targets, real optimizer
  steps through the training step, a guarded save, `verify`, and a resume (adapter, optimizer and RNG loaded back)
  whose next step is bitwise equal to the uninterrupted one.

  python scripts/full_shape.py    # about 20 s and 4.3 GB of memory on 2 CPU cores; prints one JSON
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import synthetic_examples, synthetic_layout  # noqa: E402

from higgs_train.checkpoint.resume import load_checkpoint  # noqa: E402
from higgs_train.checkpoint.save import save_checkpoint  # noqa: E402
from higgs_train.checkpoint.state import Snapshot, TrainingProgress, capture_rng, restore_rng  # noqa: E402
from higgs_train.checkpoint.verify import verify_checkpoint  # noqa: E402
from higgs_train.config import build_config  # noqa: E402
from higgs_train.data.collate import collate  # noqa: E402
from higgs_train.distributed import make_accelerator  # noqa: E402
from higgs_train.layouts import released_lm_config  # noqa: E402
from higgs_train.model import apply_lora, quiet_libraries  # noqa: E402
from higgs_train.schedule import WarmupCosine  # noqa: E402
from higgs_train.train import optimizer_step  # noqa: E402

TRAIN = build_config({"train_manifest": "-", "output_dir": "-", "lora_dropout": 0.0})  # defaults: r=16, 7 names


def lora_counts(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    targets = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
    return {
        "total_params": sum(p.numel() for p in model.parameters()),
        "lora_targets": targets,
        "lora_params": trainable,
        # adapter in float32 + AdamW's two float32 moments; the rest of a checkpoint is a few KB
        "checkpoint_bytes_estimate": trainable * 4 * 3,
    }


def whole_depth() -> dict:
    from transformers import HiggsAudioV2ForConditionalGeneration

    config = released_lm_config()
    with torch.device("meta"):
        model = apply_lora(HiggsAudioV2ForConditionalGeneration(config, use_text_head=True), TRAIN)
    return {"layers": config.num_hidden_layers, **lora_counts(model)}


def step(model, optimizer, scheduler, accelerator, batch, codebook_size) -> float:
    return optimizer_step(model, optimizer, scheduler, accelerator, [batch], TRAIN, codebook_size)[0]


def slice_run() -> dict:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import HiggsAudioV2ForConditionalGeneration

    config = released_lm_config(num_hidden_layers=2)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = apply_lora(HiggsAudioV2ForConditionalGeneration(config), TRAIN).train()
    build_s = time.perf_counter() - t0
    accelerator = make_accelerator(TRAIN)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = WarmupCosine(optimizer, 0, 10)
    layout = synthetic_layout(config)
    batches = [collate([e], layout) for e in synthetic_examples(config, 3, 256, np.random.default_rng(0))]
    t0 = time.perf_counter()
    losses = [step(model, optimizer, scheduler, accelerator, batches[0], config.codebook_size)]
    step_s = time.perf_counter() - t0
    adapter = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    snap = Snapshot(
        TrainingProgress(step=1),
        adapter,
        {"r": TRAIN.lora_r},
        TRAIN.to_dict(),
        optimizer.state_dict(),
        scheduler.state_dict(),
        rng={0: capture_rng()},
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        saved = save_checkpoint(tmp, snap)
        save_s = time.perf_counter() - t0
        assert saved.kind == "full", saved.error
        verified = verify_checkpoint(saved.path)
        assert verified.ok, verified.summary()
        loaded = load_checkpoint(saved.path)
        straight = step(model, optimizer, scheduler, accelerator, batches[1], config.codebook_size)
        after_straight = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        # resume: the adapter, optimizer, schedule and RNG back from disk, then the same next step
        set_peft_model_state_dict(model, loaded.adapter)
        optimizer.load_state_dict(loaded.optimizer)
        scheduler.load_state_dict(loaded.scheduler)
        restore_rng(loaded.rng)
        resumed = step(model, optimizer, scheduler, accelerator, batches[1], config.codebook_size)
        after_resumed = get_peft_model_state_dict(model)
        bitwise = straight == resumed and all(torch.equal(after_straight[k], after_resumed[k]) for k in after_straight)
        losses.append(resumed)
        return {
            "layers": 2,
            **lora_counts(model),
            "build_s": round(build_s, 1),
            "first_step_s": round(step_s, 1),
            "losses": [round(x, 4) for x in losses],
            "chance_loss": round(float(np.log(config.codebook_size)), 4),
            "checkpoint_bytes": verified.total_bytes,
            "save_s": round(save_s, 2),
            "verify_ok": verified.ok,
            "resume_bitwise_equal": bitwise,
            "peak_rss_gb": round(psutil.Process().memory_info().rss / 2**30, 2),
        }


def main() -> None:
    quiet_libraries()
    print(json.dumps({"whole_depth_meta": whole_depth(), "width_true_slice_cpu": slice_run()}, indent=2))


if __name__ == "__main__":
    main()
