"""--max_tokens_per_batch's plan at scale: seconds (process CPU time) to pack one epoch and how full its bins are,
on LibriTTS-R-like row lengths (log-normal around 300 tokens, 40 to 2000). Prints one JSON line per size.

  OMP_NUM_THREADS=1 python scripts/bench_token_plan.py --rows 10000 100000 --budget 4096
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from higgs_train.data.batches import TokenBudgetPlan  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--budget", type=int, default=4096)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    for n in args.rows:
        lengths = np.clip(rng.lognormal(np.log(300), 0.5, n), 40, 2000).astype(np.int64)
        start = time.process_time()
        plan = TokenBudgetPlan(lengths, args.budget, seed=0)  # packs epoch 0
        seconds = time.process_time() - start
        bins = plan._epoch(0)[0]
        fill = float(lengths.sum() / (len(bins) * args.budget))
        row = {
            "rows": n,
            "budget": args.budget,
            "epoch_s": round(seconds, 3),
            "us_per_row": round(1e6 * seconds / n, 2),
        }
        print(json.dumps({**row, "bins": len(bins), "fill": round(fill, 4)}))


if __name__ == "__main__":
    main()
