"""scripts/gpu_check.sh runs end to end on the CPU at tiny sizes: the benchmarks beside their baselines, the plan
next to each peak, and a CLI run SIGKILLed after checkpoint-20, resumed and verified."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu-smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["device"] == "cpu"
    for row, gc in zip(report["bench"], (False, True), strict=True):
        assert row["gradient_checkpointing"] is gc and row["tokens_per_s"] > 0 and row["baseline_tokens_per_s"] > 0
        assert {"mfu", "step_s", "peak_memory_gb", "data_wait_share", "checkpoint_stall_share"} <= set(row)
        assert {"planned_gib", "measured_gib", "plan_over_measured"} == set(row["plan"])
    assert report["dual_ffn"]["layers_installed"] == 2 and report["dual_ffn"]["speedup_cpu"] > 0
    levers = report["levers"]
    assert levers["packing"]["padding_share"] == 0 < levers["packing"]["baseline_padding_share"]
    assert levers["lora_dropout"]["sides"] == ["ours:dropout=0", "ours:dropout=0.05"]
    assert levers["qlora_nf4"]["sides"] == ["ours:quantize=nf4"] and levers["lora_bf16"]["tokens_per_s"] > 0
    run = report["cli_run"]
    assert run["killed_by_sigkill"] and run["resumed_exit"] == 0 and run["resumed_at_20"]
    assert run["checkpoints_valid"] == {"10": True, "20": True, "30": True}
