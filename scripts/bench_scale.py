"""What a training start costs per manifest row: time to step 1 and peak RSS, cold (first run: tokenize, encode)
and warm (the rerun that resumes), at N rows over the six synthetic clips of the tiny model, through the real CLI.

    .venv/bin/python scripts/bench_scale.py --rows 1000 100000 1000000

Each N runs twice, each in a fresh process: `--max_steps 1 --save_steps 1` (cold: a new run folder; "first" when
the folder's caches are kept from an earlier bench), then the same command with `--max_steps 2` (warm: verify,
resume, step 2). Per-row cost is the slope against the smallest N. Prints one JSON.
Rows differ in their text (a row number), so each row is tokenized; clips repeat, so per-clip work (decoding,
encoding, digests) is measured by scripts/bench_data.py, not here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str]) -> dict:
    """One CLI process: wall seconds and its peak RSS (from wait4, that process alone)."""
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "higgs_train", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def manifest(folder: Path, rows: int, base: list[dict]) -> Path:
    path = folder / f"m{rows}.jsonl"
    if not path.exists():
        with open(path, "w") as f:
            for i in range(rows):
                row = base[i % len(base)]
                f.write(json.dumps({**row, "text": f"{row['text']} {i}"}) + "\n")
    return path


def main() -> None:
    from higgs_train.tiny import build_tiny_model, make_dataset

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--work", default=str(REPO / "runs" / "bench_scale"))
    args = parser.parse_args()
    work = Path(args.work)
    model = work / "model"
    if not model.exists():
        build_tiny_model(model)
    data = work / "data"
    if not (data / "train.jsonl").exists():
        make_dataset(data)
    base = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    for row in base:
        row["audio_filepath"] = str(data / row["audio_filepath"])
    results: dict[int, dict] = {}
    for n in sorted(args.rows):
        out = work / f"run{n}"
        common = ["--train_manifest", str(manifest(data, n, base)), "--output_dir", str(out), "--model", str(model)]
        common += ["--save_steps", "1", "--no-group_by_length"]
        cold = not (out / "cache").exists()  # else the caches are kept: only the run starts again
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
        results[n] = {"cold" if cold else "first": run([*common, "--max_steps", "1"])}
        results[n]["warm"] = run([*common, "--max_steps", "2", "--save_steps", "100"])
        print(json.dumps({n: results[n]}), flush=True)
    small, *rest = sorted(results)
    for n in rest:
        for kind in ("cold", "first", "warm"):
            if kind in results[n] and kind in results[small]:
                extra = n - small
                a, b = results[small][kind], results[n][kind]
                results[n][kind]["us_per_row"] = round(1e6 * (b["seconds"] - a["seconds"]) / extra, 1)
                results[n][kind]["bytes_per_row"] = round(1024 * 1024 * (b["peak_rss_mb"] - a["peak_rss_mb"]) / extra)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
