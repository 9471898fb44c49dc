"""Everything that needs a GPU, in one command that writes one JSON (see scripts/gpu_check.sh):

1. the training-step benchmark at the released shape (bf16, LoRA r=16, seq 2048), without and with gradient
   checkpointing, each beside the plain baseline in the same run: tokens/s, MFU, step time, peak memory, data wait
   and the checkpoint stall share at --save_steps 50;
2. the memory plan's estimate against each measured peak (torch.cuda.max_memory_allocated);
3. the sync-free DualFFN against transformers' layer (scripts/bench_dual_ffn.py: one training step, A B B A);
4. the speed levers, each A/B against our default step in one process: --packing with a token budget, --compile,
   --lora_dropout 0 vs 0.05; and QLoRA (--quantize nf4) beside bf16 LoRA at batch 1 x 2048 with checkpointing: peak
   memory (goal: within 12 GB) and tokens/s;
5. a 30-step CLI run of a released-shape random model (`higgs-train init-tiny DIR --full_shape`) with
   --save_steps 10, SIGKILLed right after checkpoint-20 is published, resumed by rerunning the same command, and
   `verify` of every checkpoint.

--cpu-smoke runs the same path at tiny sizes on the CPU (CI runs it); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_json(cmd: list[str], timeout: float) -> dict:
    """Run a script that prints one JSON object last; its stderr is kept for the report on failure."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}", "stderr_tail": done.stderr[-2000:]}
    return json.loads(done.stdout[done.stdout.index("{") :])


def bench(smoke: bool) -> list[dict]:
    sizes = ["--preset", "tiny", "--steps", "3", "--batch_size", "2", "--seq_len", "128"] if smoke else [
        "--preset", "full", "--mixed_precision", "bf16", "--steps", "10", "--batch_size", "8", "--seq_len", "2048"
    ]  # fmt: skip
    out = []
    for gc in (False, True):
        result = run_json(
            [sys.executable, "scripts/bench.py", *sizes] + (["--gradient_checkpointing"] if gc else []), 400
        )
        result["plan"] = plan_vs_measured(result, smoke, gc)
        out.append(result)
    return out


LEVERS = {  # each an A/B of our step in one process (bench.py --sides), on LibriTTS-R-like row lengths
    "packing": ["--sides", "ours,ours:packing", "--max_tokens_per_batch", "16384"],
    "compile": ["--sides", "ours,ours:compile"],
    "lora_dropout": ["--sides", "ours:dropout=0,ours:dropout=0.05"],
}


def levers(smoke: bool) -> dict:
    """Packing, compile and LoRA dropout against our default step; then QLoRA's peak memory and speed beside bf16
    LoRA at batch 1 x 2048 with checkpointing (one side per process: each peak is its own)."""
    sizes = ["--preset", "tiny", "--steps", "2", "--batch_size", "2", "--seq_len", "128"] if smoke else [
        "--preset", "full", "--mixed_precision", "bf16", "--steps", "8", "--batch_size", "8", "--seq_len", "2048"
    ]  # fmt: skip
    budget = ["--max_tokens_per_batch", "512"] if smoke else []
    out = {}
    for name, sides in LEVERS.items():
        if smoke and name == "compile":
            out[name] = {"skipped": "the CPU smoke run: inductor takes minutes to compile on the CPU"}
            continue
        extra = budget if name == "packing" else []
        out[name] = run_json(
            [sys.executable, "scripts/bench.py", *sizes, "--lengths", "librittsr", *sides, *extra], 600
        )
    small = [*sizes[:-4], "--batch_size", "1", "--seq_len", sizes[-1], "--gradient_checkpointing", "--no_baseline"]
    for name, side in (("lora_bf16", "ours"), ("qlora_nf4", "ours:quantize=nf4")):
        out[name] = run_json([sys.executable, "scripts/bench.py", *small, "--sides", side], 600)
    return out


def plan_vs_measured(result: dict, smoke: bool, gc: bool) -> dict:
    """The memory plan for the benchmark's shape next to its measured peak (GPU: max_memory_allocated)."""
    if "error" in result:
        return {}
    from bench import model_config

    from higgs_train.config import build_config
    from higgs_train.plan import GIB, memory_plan

    config = model_config("tiny" if smoke else "full")
    cfg = build_config({"mixed_precision": result["mixed_precision"], "gradient_checkpointing": gc}, require_data=False)
    plan = memory_plan(config, cfg, seq_len=result["seq_len"])
    planned = (plan.total(result["batch_size"], gc) - 1.0 * GIB) / GIB  # measured peaks exclude the CUDA context
    measured = result["peak_memory_gb"]
    return {
        "planned_gib": round(planned, 2),
        "measured_gib": measured,
        "plan_over_measured": round(planned / measured, 3),
    }


def cli_run(smoke: bool, root: Path) -> dict:
    """init the model, a 30-step run killed after checkpoint-20, the same command again, verify everything."""
    from higgs_train.tiny import make_dataset

    cli = [sys.executable, "-m", "higgs_train"]
    model, run = root / "model", root / "run"
    t0 = time.perf_counter()
    subprocess.run([*cli, "init-tiny", str(model)] + ([] if smoke else ["--full_shape"]), check=True, cwd=REPO)
    init_s = time.perf_counter() - t0
    manifest = make_dataset(root / "data")
    args = [*cli, "--train_manifest", str(manifest), "--output_dir", str(run), "--model", str(model)]
    args += ["--max_steps", "30", "--save_steps", "10"] + ([] if smoke else ["--mixed_precision", "bf16"])
    env = {**os.environ, "HIGGS_TRAIN_FAILPOINT": "after_rename@20"}
    t0 = time.perf_counter()
    killed = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    resumed = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    resume_s = time.perf_counter() - t0
    verified = {}
    for step in (10, 20, 30):
        done = subprocess.run([*cli, "verify", str(run / f"checkpoint-{step}")], capture_output=True, text=True)
        verified[step] = done.returncode == 0
    return {
        "init_s": round(init_s, 1),
        "killed_exit": killed.returncode,
        "killed_by_sigkill": killed.returncode == -signal.SIGKILL,
        "first_run_s": round(first_s, 1),
        "resumed_exit": resumed.returncode,
        "resumed_at_20": "at step 20" in resumed.stderr,
        "resume_run_s": round(resume_s, 1),
        "checkpoints_valid": verified,
        "resumed_stderr_tail": "" if resumed.returncode == 0 else resumed.stderr[-2000:],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: the path, not the numbers")
    p.add_argument("--out", default="gpu_check.json", help="where the JSON goes")
    args = p.parse_args()
    import torch
    import transformers

    start = time.perf_counter()
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "smoke": args.cpu_smoke,
        "bench": bench(args.cpu_smoke),
        "levers": levers(args.cpu_smoke),
        "dual_ffn": run_json(  # the sync-free DualFFN against transformers' layer, A B B A in one process
            [sys.executable, "scripts/bench_dual_ffn.py", "--preset", "tiny" if args.cpu_smoke else "full"]
            + (["--seq_len", "64", "--rounds", "1"] if args.cpu_smoke else ["--seq_len", "2048", "--batch_size", "2"]),
            300,
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        report["cli_run"] = cli_run(args.cpu_smoke, Path(tmp))
    report["wall_s"] = round(time.perf_counter() - start, 1)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
