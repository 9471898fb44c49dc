"""How far FSDP2, ZeRO-2 and ZeRO-3 land from 2-process DDP: the same 4 steps (tiny model, lr 1e-2, accumulation
over 2, dropout 0) under each, on the CPU (gloo; the sharded modes through tests/shard_on_cpu.py), then the largest
difference of the adapter and of the AdamW moments at each saved step.

  python scripts/sharded_vs_ddp.py     # about 80 s; prints one JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
ACCELERATE = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_machines", "1"]
ARGS = ["--max_steps", "4", "--save_steps", "2", "--lr", "1e-2", "--lora_dropout", "0", "--grad_accum", "2"]


def run(mode: str, out: Path, model: Path, manifest: Path) -> None:
    config = REPO / "configs" / "accelerate" / ("cpu2.yaml" if mode == "ddp" else f"{mode}.yaml")
    script = ["-m", "higgs_train"] if mode == "ddp" else [str(REPO / "tests" / "shard_on_cpu.py")]
    cmd = [*ACCELERATE, "--config_file", str(config), "--num_processes", "2", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", *script]
    cmd += ["--train_manifest", str(manifest), "--output_dir", str(out), "--model", str(model), *ARGS]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main() -> None:
    from higgs_train.tiny import build_tiny_model, make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, manifest = build_tiny_model(tmp / "tiny", 0), make_dataset(tmp / "data")
        for mode in ("ddp", "fsdp", "zero2", "zero3"):
            run(mode, tmp / mode, model, manifest)
        report = {}
        for mode in ("fsdp", "zero2", "zero3"):
            for step in (2, 4):
                ours, ddp = tmp / mode / f"checkpoint-{step}", tmp / "ddp" / f"checkpoint-{step}"
                mine = torch.load(ours / "optimizer.pt", weights_only=True)["state"]
                theirs = torch.load(ddp / "optimizer.pt", weights_only=True)["state"]
                report[f"{mode} step {step}"] = {
                    "adapter": max_diff(load_file(ours / "adapter_model.safetensors"),
                                        load_file(ddp / "adapter_model.safetensors")),
                    "moments": max(max_diff(mine[i], {k: theirs[i][k] for k in mine[i]}) for i in mine),
                }  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
