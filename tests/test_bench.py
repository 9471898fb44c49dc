"""Smoke test of the benchmarks: they run on the tiny preset and print the promised fields (numbers not judged)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_bench_tiny_prints_every_field():
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "bench.py"),
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch_size",
        "2",
        "--seq_len",
        "256",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout[result.stdout.index("{") :])
    for key in (
        "tokens_per_s",
        "step_s",
        "peak_memory_gb",
        "mfu",
        "measured_matmul_tflops",
        "data_wait_share",
        "checkpoint_stall_share",
        "baseline_tokens_per_s",
        "speedup_vs_baseline",
    ):
        assert isinstance(out[key], float | int) and out[key] >= 0, key
