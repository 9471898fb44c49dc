"""The sync-free DualFFN against transformers' layer: one LoRA training step (forward and backward, the loss
this project trains), both models in one process, interleaved A B B A, process CPU time and wall time.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_dual_ffn.py --preset slice --rounds 4

`slice` is the released widths with 2 layers (random weights); the figure that matters is on a GPU, where each
removed `nonzero`/`masked_scatter` is a host sync (scripts/gpu_check.sh). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import model_config, synthetic_examples, synthetic_layout  # noqa: E402

from higgs_train import dual_ffn  # noqa: E402
from higgs_train.config import build_config  # noqa: E402
from higgs_train.data.collate import collate  # noqa: E402
from higgs_train.loss import audio_loss_sum  # noqa: E402
from higgs_train.model import apply_lora  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", choices=["tiny", "slice", "full"], default="slice")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512)
    args = p.parse_args()
    from transformers import HiggsAudioV2ForConditionalGeneration

    config = model_config(args.preset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = build_config({"train_manifest": "m.jsonl", "output_dir": "o", "lora_dropout": 0.0})
    torch.manual_seed(0)
    native = apply_lora(HiggsAudioV2ForConditionalGeneration(config), cfg).to(device).train()
    torch.manual_seed(0)
    fast = apply_lora(HiggsAudioV2ForConditionalGeneration(config), cfg).to(device).train()
    installed = dual_ffn.install(fast, print)
    rows = synthetic_examples(config, args.batch_size, args.seq_len, np.random.default_rng(0))
    batch = {k: v.to(device) for k, v in collate(rows, synthetic_layout(config)).items()}

    def step(model) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        audio_loss_sum(model, batch, config.codebook_size).backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.process_time() - cpu, time.perf_counter() - wall

    step(native), step(fast)  # warm-up
    times = {"native": [], "fast": []}
    for _ in range(args.rounds):
        for name in ("native", "fast", "fast", "native"):
            times[name].append(step(native if name == "native" else fast))
    cpu = {k: float(np.mean([t[0] for t in v])) for k, v in times.items()}
    wall = {k: float(np.mean([t[1] for t in v])) for k, v in times.items()}
    print(
        json.dumps(
            {
                "preset": args.preset,
                "device": device,
                "layers_installed": installed,
                "rounds": args.rounds,
                "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
                "wall_s": {k: round(v, 3) for k, v in wall.items()},
                "speedup_cpu": round(cpu["native"] / cpu["fast"], 3),
                "speedup_wall": round(wall["native"] / wall["fast"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
