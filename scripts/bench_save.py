"""Save stall benchmark: how long the checkpoint hook stops training, per save and as a share of the run, with
--async_save (the default) and without.

Runs a demo-sized fine-tune (tiny model, synthetic clips, 30 steps, --save_steps 10) in-process and prints one
JSON object. Usage: python scripts/bench_save.py [--steps 30] [--save_steps 10] [--lora_r 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
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
        report = {"steps": args.steps, "save_steps": args.save_steps}
        for mode in ("async", "sync"):
            cfg = build_config(
                {
                    "train_manifest": str(manifest),
                    "output_dir": str(root / f"run-{mode}"),
                    "model": str(model),
                    "max_steps": args.steps,
                    "save_steps": args.save_steps,
                    "lora_r": args.lora_r,
                    "batch_size": 2,
                    "async_save": mode == "async",
                }
            )
            result = train(cfg, log=lambda _m: None, progress_bar=False)
            stalls = result.save_stalls
            report[mode] = {
                "saves": len(stalls),
                "save_write_s": [round(s.seconds, 4) for s in result.saves],
                "loop_stall_s": [round(s, 4) for s in stalls],
                "mean_loop_stall_s": round(sum(stalls) / len(stalls), 4),
                "training_loop_s": round(result.loop_seconds, 3),
                "stall_share_of_training": round(sum(stalls) / result.loop_seconds, 4),
            }
        report["checkpoint_bytes"] = sum(f.stat().st_size for f in result.saves[-1].path.iterdir())
        report["note"] = "the last save is always synchronous (the run ends there)"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
