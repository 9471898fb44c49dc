"""--lora_dropout 0 against 0.05 on the tiny model: the same 60 steps of the demo data per seed, the mean training
loss of the last 10 steps and the held-out loss (--eval_fraction 0.34). Prints one JSON line per run. Its speed
is bench.py's: `python scripts/bench.py --preset slice --sides ours:dropout=0,ours:dropout=0.05`.

  OMP_NUM_THREADS=1 python scripts/bench_lora_dropout.py --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from higgs_train.config import build_config  # noqa: E402
from higgs_train.tiny import build_tiny_model, make_dataset  # noqa: E402
from higgs_train.train import train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, manifest = build_tiny_model(tmp / "model"), make_dataset(tmp / "data")
        for seed in args.seeds:
            for dropout in (0.0, 0.05):
                out = tmp / f"run-{dropout}-{seed}"
                flags = {"train_manifest": str(manifest), "output_dir": str(out), "model": str(model), "seed": seed}
                flags |= {"max_steps": args.steps, "save_steps": args.steps, "eval_steps": args.steps, "lr": 1e-2}
                flags |= {"batch_size": 2, "eval_fraction": 0.34, "lora_dropout": dropout}
                result = train(build_config(flags), log=lambda _m: None, progress_bar=False)
                rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                held_out = [r["eval_loss"] for r in rows if "eval_loss" in r][-1]
                last = result.losses[-10:]
                print(json.dumps({"lora_dropout": dropout, "seed": seed, "last10_loss": round(sum(last) / len(last), 4),
                                  "eval_loss": round(held_out, 4)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
