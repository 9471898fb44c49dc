"""What the code cache costs a start per clip: N cached clips (random int16 codes, 8 codebooks x 150 frames, a
6 s clip at 25 frames/s) written in shards of 256, then loaded by a fresh CodeCache as a start does, twice: the
first load after the write hashes each shard file once, the second only stats them.

    .venv/bin/python scripts/bench_codes.py --clips 20000 100000

Prints one JSON line per N: seconds per load, the process's peak RSS, the cache's size on disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from higgs_train.data.codes import Clip, CodeCache


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, nargs="+", default=[20_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for n in args.clips:
        out = Path(tempfile.mkdtemp(prefix="bench_codes-"))
        try:
            cache = CodeCache(out, print)
            for start in range(0, n, 256):
                keys = range(start, min(n, start + 256))
                cache.add({f"k{i}": Clip(rng.integers(0, 1024, (8, 150)).astype(np.int16), 6.0, -20.0) for i in keys})
            wanted = {f"k{i}" for i in range(n)}
            loads = []
            for _ in range(2):
                t = time.perf_counter()
                found = CodeCache(out, print).load(wanted)
                loads.append(round(time.perf_counter() - t, 2))
                assert len(found) == n
            disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                json.dumps(
                    {
                        "clips": n,
                        "load_s": loads,
                        "us_per_clip": round(loads[1] / n * 1e6, 1),
                        "peak_rss_mb": round(peak),
                        "disk_mb": round(disk / 2**20),
                    }
                ),
                flush=True,
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
