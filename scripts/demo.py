"""`make demo`: a real end-to-end fine-tune on the CPU, from nothing but this repository.

Builds the tiny random-weight Higgs Audio v2 model, synthesises a handful of speech-like clips (voiced
harmonics with a moving pitch and syllable envelope) with transcripts, trains 30 steps with --save_steps 10
through the same CLI users run, and prints where the adapter is and how the loss moved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from higgs_train.checkpoint.report import checkpoint_rows
from higgs_train.cli import app
from higgs_train.tiny import build_tiny_model, make_dataset


def main(folder: str = "demo_out") -> int:
    root = Path(folder)
    model_dir = root / "tiny-model"
    if not (model_dir / "config.json").exists():
        print(f"building the tiny model in {model_dir}")
        build_tiny_model(model_dir)
    manifest = make_dataset(root / "data")
    run_dir = root / "run"
    args = [
        "--train_manifest",
        str(manifest),
        "--output_dir",
        str(run_dir),
        "--model",
        str(model_dir),
        "--max_steps",
        "30",
        "--save_steps",
        "10",
        "--lr",
        "3e-3",
        "--warmup_steps",
        "3",
        "--batch_size",
        "2",
    ]
    print("higgs-train " + " ".join(args))
    try:
        app(args, prog_name="higgs-train", standalone_mode=False)
    except SystemExit as e:
        if e.code:
            return int(e.code)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = metrics[0], metrics[-1]
    print(f"\nloss moved from {first['loss']:.3f} (step {first['step']}) to {last['loss']:.3f} (step {last['step']})")
    for row in checkpoint_rows(run_dir):
        print(f"  {row.name}: {'valid' if row.valid else 'INVALID ' + row.reason}")
    print(f"adapter: {run_dir / 'checkpoint-30'} (adapter_model.safetensors + adapter_config.json)")
    print(f"rerun `make demo` to see it resume: the run is complete, so it stops at once at step {last['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
