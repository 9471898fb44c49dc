"""Real processes, real signals: SIGKILL at each point of a save, SIGTERM mid-run; then rerun and finish."""

import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.cli import app
from higgs_train.faults import ENV
from tests.conftest import train_args, wait_for_steps

pytestmark = pytest.mark.slow


def launch(args, env_extra=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "higgs_train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("point", ["before_write", "mid_file", "before_rename", "after_rename"])
def test_sigkill_during_save_then_resume(point, synth_manifest, tiny_model, tmp_path):
    out = tmp_path / "run"
    args = train_args(synth_manifest, out, tiny_model, "--max_steps", "6", "--save_steps", "2")
    proc = launch(args, {ENV: f"{point}@4"})
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, log
    assert verify_checkpoint(out / "checkpoint-2").ok
    if point == "after_rename":
        assert verify_checkpoint(out / "checkpoint-4").ok
        assert (out / "latest").read_text() == "checkpoint-2\n"  # the pointer lags; resume does not trust it
    else:
        assert not (out / "checkpoint-4").exists()
        assert list(out.glob("checkpoint-4.tmp-*"))  # the torn save is left behind...

    result = CliRunner().invoke(app, args)  # ...and the rerun cleans it, resumes and finishes
    assert result.exit_code == 0, result.output
    resumed_at = 4 if point == "after_rename" else 2
    assert f"resumed from {out / f'checkpoint-{resumed_at}'} at step {resumed_at}" in result.output
    assert not list(out.glob("*.tmp-*"))
    assert all(verify_checkpoint(out / f"checkpoint-{s}").ok for s in (2, 4, 6))
    assert (out / "latest").read_text() == "checkpoint-6\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: the SSH session dropped
def test_stop_signal_saves_and_exits_130(synth_manifest, tiny_model, tmp_path, sig):
    out = tmp_path / "run"
    proc = launch(train_args(synth_manifest, out, tiny_model, "--max_steps", "100000", "--save_steps", "100000"))
    wait_for_steps(out, 2)
    proc.send_signal(sig)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log
    assert f"{sig.name}: finishing this micro-batch, saving, then stopping" in log
    saved = list(out.glob("checkpoint-*"))
    assert len(saved) == 1 and verify_checkpoint(saved[0]).ok
    assert f"stopped by signal at step {saved[0].name.split('-')[1]}; rerun the same command to resume" in log


def test_a_stop_leaves_a_marker_for_job_scripts_and_duplicates_do_not_quit(synth_manifest, tiny_model, tmp_path):
    """SIGTERM, then SIGTERM and SIGHUP again while the stop-save is being written (a scheduler signals every
    process, the launcher forwards): one stop request, the save in flight is published; STOPPED says so, and the
    next start removes it."""
    import json
    import time

    out = tmp_path / "run"
    args = train_args(synth_manifest, out, tiny_model, "--max_steps", "100000", "--save_steps", "100000")
    proc = launch(args, {ENV: "before_write:sleep"})  # every save takes 2 s more: a slow disk
    wait_for_steps(out, 2)
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGHUP):
        proc.send_signal(sig)
        time.sleep(0.5)  # a signal still pending when its twin arrives is merged into one by the kernel
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log
    assert "SIGTERM again: the same stop request; the save goes on (Ctrl-C again to quit now)" in log
    (saved,) = out.glob("checkpoint-*")
    assert verify_checkpoint(saved).ok
    marker = json.loads((out / "STOPPED").read_text())
    assert marker["latest"] == saved.name and marker["reason"].startswith("stopped by signal at step")
    result = CliRunner().invoke(app, [*args[:-4], "--max_steps", str(int(saved.name.split("-")[1]) + 1)])
    assert result.exit_code == 0, result.output
    assert not (out / "STOPPED").exists()
