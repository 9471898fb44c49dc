"""Save stall benchmark: how long the guarded checkpoint save stops training, per save and as a share of the run.

Runs a demo-sized fine-tune (tiny model, synthetic clips, 30 steps, --save_steps 10) in-process and prints one
JSON object. Usage: python scripts/bench_save.py [--steps 30] [--save_steps 10] [--lora_r 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from higgs_train.config import build_config  # noqa: E402
from higgs_train.tiny import build_tiny_model, make_dataset  # noqa: E402
from higgs_train.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--save_steps", type=int, default=10)
    parser.add_argument("--lora_r", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model")
        manifest = make_dataset(root / "data")
        cfg = build_config(
            {
                "train_manifest": str(manifest),
                "output_dir": str(root / "run"),
                "model": str(model),
                "max_steps": args.steps,
                "save_steps": args.save_steps,
                "lora_r": args.lora_r,
                "batch_size": 2,
            }
        )
        start = time.perf_counter()
        result = train(cfg, log=lambda _m: None, progress_bar=False)
        total = time.perf_counter() - start
        stalls = [round(s.seconds, 4) for s in result.saves]
        ckpt_bytes = sum(f.stat().st_size for f in result.saves[-1].path.iterdir())
    print(
        json.dumps(
            {
                "steps": args.steps,
                "save_steps": args.save_steps,
                "saves": len(stalls),
                "checkpoint_bytes": ckpt_bytes,
                "save_stall_s": stalls,
                "mean_save_stall_s": round(sum(stalls) / len(stalls), 4),
                "training_loop_s": round(result.loop_seconds, 3),
                "save_share_of_training": round(sum(stalls) / result.loop_seconds, 4),
                "run_wall_s_incl_setup": round(total, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
