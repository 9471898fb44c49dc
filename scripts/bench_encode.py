"""Encoding shared by the processes of a launch: `higgs-train prepare` on N distinct clips with 1 process, then
with `accelerate launch --multi_gpu --num_processes 2` (gloo on the CPU), each into a fresh run folder, one torch
thread per process (OMP_NUM_THREADS=1), so 2 processes use the 2 cores 1 process leaves half idle. Runs A B B A
(1, 2, 2, 1 processes) and compares the mean encoding times. Reports what the runs log: clips/s and hours of
audio per hour, per process and in total. Prints one JSON.

    .venv/bin/python scripts/bench_encode.py --clips 240

Clips are bench_data.py's (the six voices of ../shared/data/voices, each copy made distinct); the audio
tokenizer is the tiny random-weight one (a GPU's figure for the released codec: gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import clips_folder  # noqa: E402

LINE = re.compile(
    r"encoding(?:, process (\d)| in total)?: (\d+) clips, ([\d.]+) h of audio in ([\d.]+) s: ([\d.]+) clips/s"
)


def prepare(manifest: Path, out: Path, model: Path, processes: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = ["prepare", "--train_manifest", str(manifest), "--output_dir", str(out), "--model", str(model)]
    if processes == 1:
        cmd = [sys.executable, "-m", "higgs_train", *args]
    else:
        accelerate = str(Path(sys.executable).with_name("accelerate"))
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "higgs_train", *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"prepare with {processes} process(es) failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    parts = {}
    for m in LINE.finditer(done.stdout + done.stderr):
        key = "total" if m.group(1) is None else f"process {m.group(1)}"
        clips, hours, wall, rate = int(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5))
        parts[key] = {
            "clips": clips,
            "encode_s": wall,
            "clips_per_s": rate,
            "audio_h_per_h": round(hours * 3600 / wall),
        }
    return {"processes": processes, "command_s": round(time.perf_counter() - start, 1), **parts}


def main() -> None:
    from higgs_train.tiny import build_tiny_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=240)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model")
        manifest = clips_folder(root, args.clips)
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for i, processes in enumerate((1, 2, 2, 1)):  # ABBA: the shared cores' drift hits both alike
            runs[processes].append(prepare(manifest, root / f"run{i}", model, processes))
    mean = {p: sum(r["total"]["encode_s"] for r in rs) / len(rs) for p, rs in runs.items()}
    out = {
        "clips": args.clips,
        "one_process": runs[1],
        "two_processes": runs[2],
        "speedup": round(mean[1] / mean[2], 2),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
