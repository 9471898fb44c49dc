"""Check the memory plan against measured allocations: the released widths, 2 layers, float32 on the CPU, one
forward + backward of the training loss at a few sequence lengths, with and without gradient checkpointing.

Measured = the peak resident memory during forward + backward (sampled every millisecond) above the resident
memory before it. The script runs itself with glibc's mmap threshold fixed at 64 KiB (by default it grows after
large frees, and freed memory then stays resident), so every tensor of 64 KiB or more enters and leaves the
resident set when it is allocated and freed.
On a GPU, `scripts/gpu_check.sh` compares the plan with `torch.cuda.max_memory_allocated` instead.

  python scripts/plan_check.py        # about a minute and 8 GB on 2 CPU cores; prints one JSON
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import synthetic_examples, synthetic_layout  # noqa: E402

from higgs_train.config import build_config  # noqa: E402
from higgs_train.data.collate import collate  # noqa: E402
from higgs_train.layouts import released_lm_config  # noqa: E402
from higgs_train.loss import audio_loss_sum  # noqa: E402
from higgs_train.model import apply_lora, quiet_libraries  # noqa: E402
from higgs_train.plan import memory_plan  # noqa: E402


def peak_during(fn) -> float:
    """Peak resident bytes above the level before `fn` runs."""
    proc = psutil.Process()
    gc.collect()
    before = peak = proc.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return peak - before


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    from transformers import HiggsAudioV2ForConditionalGeneration

    quiet_libraries()
    torch.set_num_threads(2)
    config = released_lm_config(num_hidden_layers=2)
    rows = []
    for gc_on in (False, True):
        cfg = build_config({"train_manifest": "-", "output_dir": "-", "gradient_checkpointing": gc_on})
        torch.manual_seed(0)
        model = apply_lora(HiggsAudioV2ForConditionalGeneration(config), cfg).train()
        for seq in (512, 1024, 2048):
            example = synthetic_examples(config, 1, seq, np.random.default_rng(seq))[0]
            batch = collate([example], synthetic_layout(config))
            tokens = int(batch["attention_mask"].sum())
            plan = memory_plan(config, cfg, seq_len=tokens)

            def step(model=model, batch=batch):
                audio_loss_sum(model, batch, config.codebook_size).backward()

            step()  # warm-up: the first call allocates lazily initialised buffers
            model.zero_grad(set_to_none=True)
            measured = peak_during(step)
            model.zero_grad(set_to_none=True)
            counted = plan.activations(1, gc_on)
            rows.append(
                {
                    "gradient_checkpointing": gc_on,
                    "tokens": tokens,
                    "measured_gib": round(measured / 2**30, 3),
                    "planned_gib": round(counted / 2**30, 3),
                    "planned_over_measured": round(counted / max(measured, 1), 3),
                }
            )
        del model
    print(json.dumps({"released_widths_2_layers_fp32_cpu": rows}, indent=2))


if __name__ == "__main__":
    main()
