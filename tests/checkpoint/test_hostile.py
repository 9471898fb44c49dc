"""A hostile world around the checkpoints: pickled payloads, a shared run folder, a full disk between saves, and a
resume that changes the schedule."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from higgs_train.checkpoint.lock import LOCK_FILE, RunLock
from higgs_train.checkpoint.resume import load_checkpoint
from higgs_train.checkpoint.save import save_checkpoint
from higgs_train.checkpoint.state import capture_rng, read_rng
from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.cli import app
from higgs_train.errors import CheckpointError, OutputDirError
from higgs_train.metrics import MetricsLog, read_metrics
from higgs_train.plot import plot_run
from tests.conftest import fill_disk, quiet, runner, train_args


class Payload:
    """Unpickling this runs a command: what a tampered checkpoint file would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(checkpoint, name: str, obj) -> None:
    """Write a pickle into the checkpoint and rewrite integrity.json so the sha256 check passes, as an attacker
    who can edit the folder would."""
    torch.save(obj, checkpoint / name)
    integrity = json.loads((checkpoint / "integrity.json").read_text())
    data = (checkpoint / name).read_bytes()
    integrity["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "integrity.json").write_text(json.dumps(integrity))


@pytest.mark.parametrize("name", ["rng_state_0.pt", "optimizer.pt", "scheduler.pt"])
def test_pickle_payload_never_runs_on_verify_or_resume(tmp_path, snapshot_factory, name):
    path = save_checkpoint(tmp_path, snapshot_factory(3)).path
    marker = tmp_path / "pwned"
    if name.startswith("rng_state"):
        (path / "rng_state_0.safetensors").unlink()  # an old-format checkpoint, whose RNG file is a pickle
        integrity = json.loads((path / "integrity.json").read_text())
        del integrity["files"]["rng_state_0.safetensors"]
        (path / "integrity.json").write_text(json.dumps(integrity))
    _plant(path, name, {"python": Payload(marker), "state": {}, "param_groups": []})
    result = verify_checkpoint(path)
    assert not result.ok and f"{name} does not load safely (UnpicklingError" in result.summary()
    with pytest.raises(CheckpointError, match="cannot load the checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_old_pickled_rng_loads_through_the_allow_list(tmp_path):
    state = capture_rng()
    torch.save(state, tmp_path / "rng_state_0.pt")  # what checkpoints before 0.2 wrote
    back = read_rng(tmp_path / "rng_state_0.pt")
    assert back["python"] == state["python"] and torch.equal(back["torch"], state["torch"])
    assert (back["numpy"][1] == state["numpy"][1]).all()


def test_no_unpickling_anywhere_in_the_package():
    from pathlib import Path

    import higgs_train

    root = Path(higgs_train.__file__).parent
    text = {p: p.read_text() for p in root.rglob("*.py")}
    for needle in ("weights_only=False", "allow_pickle=True", "trust_remote_code", "pickle.load", " eval("):
        assert not [p.name for p, t in text.items() if needle in t], needle


def _hold_lock(folder, ready):
    code = (
        "import sys, time; from higgs_train.checkpoint.lock import RunLock\n"
        f"with RunLock({str(folder)!r}, 'training'):\n"
        f"    open({str(ready)!r}, 'w').close(); time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    return proc


def test_second_run_on_a_folder_stops_naming_the_holder_and_sigkill_frees_it(synth_manifest, tiny_model, tmp_path):
    run = tmp_path / "run"
    holder = _hold_lock(run, tmp_path / "ready")
    try:
        result = runner.invoke(app, train_args(synth_manifest, run, tiny_model, "--max_steps", "1"))
        assert result.exit_code == 2
        assert f"--output_dir {run} is in use by another higgs-train process (pid {holder.pid} on " in result.output
        assert "training since" in result.output and "wait for it to finish or stop it" in result.output
        prepare = runner.invoke(app, ["prepare", *train_args(synth_manifest, run, tiny_model)])
        assert prepare.exit_code == 2 and f"pid {holder.pid}" in prepare.output
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock, nothing stale is left
        holder.wait()
    assert (run / LOCK_FILE).exists()
    result = runner.invoke(app, train_args(synth_manifest, run, tiny_model, "--max_steps", "1"))
    assert result.exit_code == 0, result.output


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    with RunLock(tmp_path, "training"):
        with pytest.raises(OutputDirError, match=f"pid {os.getpid()} on .*training since"):
            with RunLock(tmp_path, "prepare"):
                pass
    with RunLock(tmp_path, "prepare"):  # released on exit
        pass


def test_metrics_on_a_full_disk_warn_keep_whole_rows_and_readers_skip_a_torn_line(small_disk):
    disk = small_disk(512)
    said = []
    log = MetricsLog(disk, 0, say=said.append)
    log.log({"step": 1, "loss": 1.0})
    filler = fill_disk(disk)
    for step in (2, 3):
        log.log({"step": step, "loss": 1.0, "pad": "y" * 4000})
    assert len(said) == 1 and "warning: cannot write" in said[0] and "No space left on device" in said[0]
    filler.unlink()
    log.log({"step": 4, "loss": 0.5})
    log.close()
    assert [r["step"] for r in read_metrics(disk)] == [1, 4]
    with open(disk / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a line torn by a crash
    assert [r["step"] for r in read_metrics(disk)] == [1, 4]
    assert plot_run(disk).exists()
    MetricsLog(disk, 4, say=quiet).close()  # a resume at step 4 trims the torn line
    lines = (disk / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 4]


def _lrs(run):
    return {r["step"]: r["lr"] for r in read_metrics(run) if "lr" in r}


def test_resume_with_a_longer_max_steps_and_a_new_lr_runs_the_new_schedule(synth_manifest, tiny_model, tmp_path):
    run = tmp_path / "run"
    base = train_args(synth_manifest, run, tiny_model, "--save_steps", "4", "--warmup_steps", "0")
    assert runner.invoke(app, [*base, "--max_steps", "4", "--lr", "1e-3"]).exit_code == 0
    assert _lrs(run)[4] < 2e-4  # the end of a 4-step cosine
    result = runner.invoke(app, [*base, "--max_steps", "8", "--lr", "2e-3"])
    assert result.exit_code == 0, result.output
    assert "schedule: peak --lr 0.002, --warmup_steps 0, cosine to step 8 (this run's settings); step 5 runs at" in (
        result.output
    )
    import math

    expected = 2e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 8))
    assert _lrs(run)[5] == pytest.approx(expected)  # not lr 0, not the old peak


def _rewrite(path, name: str, data: bytes) -> None:
    """Tamper with a file and with integrity.json, as a careful tamperer would: the hashes agree again."""
    (path / name).write_bytes(data)
    integrity = json.loads((path / "integrity.json").read_text())
    integrity["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "integrity.json").write_text(json.dumps(integrity))


@pytest.mark.parametrize(
    "change, says",
    [
        ({"r": 8}, "adapter_config.json says r=8 but "),
        ({"target_modules": ["k_proj"]}, "adapter_config.json target_modules ['k_proj'] do not include q_proj"),
    ],
)
def test_an_adapter_config_that_does_not_fit_its_tensors_is_invalid(tmp_path, snapshot_factory, change, says):
    path = save_checkpoint(tmp_path, snapshot_factory(2)).path
    config = json.loads((path / "adapter_config.json").read_text())
    _rewrite(path, "adapter_config.json", json.dumps({**config, **change}).encode())
    result = verify_checkpoint(path)
    assert not result.ok and says in result.summary() and "tampered" in result.summary()


def test_a_link_inside_a_checkpoint_is_never_followed(tmp_path, snapshot_factory):
    path = save_checkpoint(tmp_path / "run", snapshot_factory(2)).path
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes((path / "adapter_config.json").read_bytes())
    (path / "adapter_config.json").unlink()
    (path / "adapter_config.json").symlink_to(outside)  # the same bytes: only the link is wrong
    result = verify_checkpoint(path)
    assert (
        not result.ok and "file adapter_config.json not a regular file (a link, folder or device)" in result.summary()
    )


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("micro_batches", -5, "progress.micro_batches is -5, below 0"),
        ("samples_seen", -100, "progress.samples_seen is -100, below 0"),
        ("micro_batches", "x", "progress.micro_batches is 'x', not an integer"),
        ("world_size", 0, "progress.world_size is 0, below 1"),
    ],
)
def test_every_progress_field_is_type_and_range_checked(tmp_path, snapshot_factory, field, value, says):
    path = save_checkpoint(tmp_path, snapshot_factory(2)).path
    state = json.loads((path / "trainer_state.json").read_text())
    state["progress"][field] = value
    _rewrite(path, "trainer_state.json", json.dumps(state).encode())
    result = verify_checkpoint(path)
    assert not result.ok and says in result.summary()
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_thousands_of_junk_files_make_one_short_line(tmp_path, snapshot_factory):
    path = save_checkpoint(tmp_path, snapshot_factory(2)).path
    for i in range(5000):
        (path / f"junk-{i}").write_bytes(b"")
    summary = verify_checkpoint(path).summary()
    assert "unexpected 5000 files (junk-0, junk-1, junk-10, ...)" in summary and len(summary) < 400
