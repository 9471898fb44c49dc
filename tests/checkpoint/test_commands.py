"""`checkpoints` and `verify` commands, and the save-failure policy inside a real training run."""

import errno

import higgs_train.checkpoint.manager as hook_module
import higgs_train.checkpoint.save as save_module
from higgs_train.checkpoint.save import SaveResult, save_checkpoint
from higgs_train.cli import app
from tests.conftest import runner, train_args


def test_verify_command(tmp_path, snapshot_factory):
    path = save_checkpoint(tmp_path, snapshot_factory(3)).path
    ok = runner.invoke(app, ["verify", str(path)])
    assert ok.exit_code == 0 and f"{path}: valid full checkpoint at step 3 (4 adapter tensors)" in ok.output
    (path / "optimizer.pt").write_bytes(b"corrupt")
    bad = runner.invoke(app, ["verify", str(path)])
    assert bad.exit_code == 1
    assert f"{path}: invalid: optimizer.pt has 7 bytes, expected" in bad.output


def test_checkpoints_table_marks_invalid_and_resume_pick(tmp_path, snapshot_factory):
    save_checkpoint(tmp_path, snapshot_factory(2))
    save_checkpoint(tmp_path, snapshot_factory(4))
    (tmp_path / "checkpoint-4" / "integrity.json").unlink()
    (tmp_path / "checkpoint-6.tmp-1234").mkdir()
    result = runner.invoke(app, ["checkpoints", str(tmp_path)])
    assert result.exit_code == 0
    lines = {
        name: next(line for line in result.output.splitlines() if name in line)
        for name in ("checkpoint-2", "checkpoint-4")
    }
    assert "invalid" in lines["checkpoint-4"]
    assert (
        "checkpoint-4: integrity.json missing or unreadable (FileNotFoundError): not a finished save" in result.output
    )
    assert "valid" in lines["checkpoint-2"] and "<-" in lines["checkpoint-2"]
    assert "checkpoint-6.tmp-1234: unfinished save (removed at the next start)" in result.output


def failing_save(fail_steps):
    real = hook_module.save_checkpoint

    def save(out, snapshot, **kw):
        if snapshot.progress.step in fail_steps:
            return SaveResult(snapshot.progress.step, None, None, 0.0, "OSError: [Errno 28] No space left on device")
        return real(out, snapshot, **kw)

    return save


def test_failed_save_stops_the_run_by_default(synth_manifest, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(hook_module, "save_checkpoint", failing_save({4}))
    args = train_args(
        synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "6", "--save_steps", "2", "--no-async_save"
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 3
    assert (
        "error: save at step 4 failed (OSError: [Errno 28] No space left on device); the last good checkpoint is "
        "untouched. Free disk space or fix permissions, then rerun the same command to resume" in result.output
    )
    assert (tmp_path / "run" / "checkpoint-2").is_dir() and not (tmp_path / "run" / "checkpoint-6").exists()


def test_continue_policy_stops_after_consecutive_failures(synth_manifest, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(hook_module, "save_checkpoint", failing_save({2, 6, 8}))
    args = train_args(
        synth_manifest,
        tmp_path / "run",
        tiny_model,
        "--max_steps",
        "10",
        "--save_steps",
        "2",
        "--on_save_error",
        "continue",
        "--max_save_failures",
        "2",
        "--no-async_save",
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and "save at step 8 failed" in result.output  # 2 ok at 4, then 6 and 8 fail
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-4"]


def test_fallback_checkpoint_resumes_with_fresh_optimizer(synth_manifest, tiny_model, tmp_path, monkeypatch):
    real = save_module.write_bytes

    def full_disk(path, data):
        if "checkpoint-2" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(save_module, "write_bytes", full_disk)
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "2")
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and "wrote adapter-only fallback" in first.output
    monkeypatch.undo()
    second = runner.invoke(app, [*args[:-1], "4"])
    assert second.exit_code == 0, second.output
    assert "checkpoint-2 is an adapter-only fallback: resuming with a fresh optimizer state" in second.output


def test_async_save_failure_is_learnt_at_the_next_save(synth_manifest, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(hook_module, "save_checkpoint", failing_save({2}))
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "8", "--save_steps", "2")
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and "error: save at step 2 failed" in result.output
    # the step-2 save ran in the background; its failure was learnt at the step-4 save, which still completes
    # (the run waits for it) before the run stops: no tmp folder is left behind
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-4"]


def test_checkpoints_never_fails_while_rotation_removes_folders(tmp_path, snapshot_factory):
    import shutil
    import threading

    from higgs_train.checkpoint.report import checkpoint_rows

    source = save_checkpoint(tmp_path / "src", snapshot_factory(2)).path
    save_checkpoint(tmp_path, snapshot_factory(1))
    done = threading.Event()

    def rotate():  # a training run saving a new checkpoint and rotating the one before, as fast as it can
        step = 2
        while not done.is_set():
            step += 1
            shutil.copytree(source, tmp_path / f"checkpoint-{step}")
            shutil.rmtree(tmp_path / f"checkpoint-{step - 1}", ignore_errors=True)

    rotator = threading.Thread(target=rotate)
    rotator.start()
    try:
        for _ in range(300):
            rows = checkpoint_rows(tmp_path)  # never FileNotFoundError: a vanished folder is left out
            assert "checkpoint-1" in [r.name for r in rows]
    finally:
        done.set()
        rotator.join()


def test_checkpoints_with_only_valid_ones_does_not_say_there_are_none(tmp_path, snapshot_factory):
    save_checkpoint(tmp_path, snapshot_factory(2))
    save_checkpoint(tmp_path, snapshot_factory(4))
    result = runner.invoke(app, ["checkpoints", str(tmp_path)])
    assert result.exit_code == 0 and "no checkpoints" not in result.output
    (tmp_path / "empty").mkdir()
    assert "no checkpoints" in runner.invoke(app, ["checkpoints", str(tmp_path / "empty")]).output
