"""The guarded save with real and injected faults: nothing invalid is ever published under checkpoint-N."""

import errno
import json
import os
import shutil

import pytest
import torch

import higgs_train.checkpoint.save as save_module
import higgs_train.files as ckpt_io
from higgs_train.checkpoint import layout
from higgs_train.checkpoint.resume import clean_stale, find_resume_point
from higgs_train.checkpoint.rotate import rotate
from higgs_train.checkpoint.save import StepExistsError, save_checkpoint
from higgs_train.checkpoint.verify import verify_checkpoint
from tests.conftest import quiet, raising


def test_publish_protocol_tmp_then_rename(tmp_path, snapshot_factory, monkeypatch):
    seen = {}
    real_verify = save_module.verify_checkpoint

    def spy(path, expected_adapter=None, unpublished=False):
        seen["tmp_exists"] = path.exists() and layout.TMP_MARK in path.name and unpublished
        seen["final_exists"] = (tmp_path / "checkpoint-5").exists()
        return real_verify(path, expected_adapter, unpublished)

    monkeypatch.setattr(save_module, "verify_checkpoint", spy)
    result = save_checkpoint(tmp_path, snapshot_factory(5))
    assert seen == {"tmp_exists": True, "final_exists": False}
    assert result.ok and result.kind == "full" and result.path == tmp_path / "checkpoint-5"
    assert not [p for p in tmp_path.iterdir() if layout.TMP_MARK in p.name]
    assert (tmp_path / layout.LATEST).read_text() == "checkpoint-5\n"
    names = {p.name for p in result.path.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state_0.safetensors",
        "trainer_state.json",
        "integrity.json",
    } == names
    assert json.loads((result.path / "adapter_config.json").read_text())["target_modules"] == ["q_proj"]


def test_a_real_disk_too_small_for_the_full_save_gets_the_adapter_only_fallback(small_disk, snapshot_factory):
    """A real tmpfs of 700 KB: the full checkpoint (adapter + AdamW moments, 1.5 MB estimated) does not fit, the
    adapter alone does (written on the same disk, verified)."""
    gen = torch.Generator().manual_seed(0)
    adapter = {
        f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{ab}.weight": torch.randn(
            *((4, 2048) if ab == "A" else (2048, 4)), generator=gen
        )
        for i in range(2)
        for ab in "AB"
    }
    disk = small_disk(700)
    result = save_checkpoint(disk, snapshot_factory(4, adapter=adapter), min_free_disk_gb=0)
    assert result.kind == "fallback" and "free, a checkpoint needs" in result.error
    assert verify_checkpoint(result.path).ok and result.path.parent == disk


def test_enospc_during_full_save_falls_back_to_adapter_only(tmp_path, snapshot_factory, monkeypatch):
    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(save_module, "write_bytes", full_disk)
    result = save_checkpoint(tmp_path, snapshot_factory(4))
    assert result.kind == "fallback" and "No space left on device" in result.error
    check = verify_checkpoint(result.path)
    assert check.ok and check.kind == "fallback"
    assert {p.name for p in result.path.iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "trainer_state.json",
        "integrity.json",
    }
    failed = list((tmp_path / layout.FAILED_DIR).iterdir())
    assert len(failed) == 1 and "No space left on device" in (failed[0] / "error.txt").read_text()


def test_fallback_dir_used_when_given(tmp_path, snapshot_factory, monkeypatch):
    monkeypatch.setattr(save_module, "write_bytes", raising(OSError(errno.EIO, "I/O error")))
    result = save_checkpoint(tmp_path / "out", snapshot_factory(2), fallback_dir=tmp_path / "fb")
    assert result.path == tmp_path / "fb" / "checkpoint-2" and verify_checkpoint(result.path).ok


def test_both_saves_fail_keeps_last_good(tmp_path, snapshot_factory, monkeypatch):
    good = save_checkpoint(tmp_path, snapshot_factory(2))
    monkeypatch.setattr(save_module, "write_bytes", raising(OSError(errno.EACCES, "denied")))
    monkeypatch.setattr(save_module, "_fallback_files", raising(OSError(errno.ENOSPC, "full")))
    result = save_checkpoint(tmp_path, snapshot_factory(4))
    assert not result.ok and "denied" in result.error and "fallback failed too" in result.error
    assert not (tmp_path / "checkpoint-4").exists()
    assert verify_checkpoint(good.path).ok and (tmp_path / layout.LATEST).read_text() == "checkpoint-2\n"
    assert len(list((tmp_path / layout.FAILED_DIR).iterdir())) == 2
    assert find_resume_point([tmp_path], quiet).path == good.path


def test_real_eacces_on_readonly_folder(tmp_path, snapshot_factory):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions; EACCES is injected in the other tests")
    tmp_path.chmod(0o500)
    try:
        assert not save_checkpoint(tmp_path, snapshot_factory(1)).ok
    finally:
        tmp_path.chmod(0o700)


def test_nan_weights_never_published(tmp_path, snapshot_factory):
    snap = snapshot_factory(3)
    next(iter(snap.adapter.values()))[0, 0] = float("nan")
    result = save_checkpoint(tmp_path, snap)
    assert not result.ok and "NaN or Inf" in result.error
    assert not (tmp_path / "checkpoint-3").exists()


def test_empty_adapter_refused(tmp_path, snapshot_factory):
    snap = snapshot_factory(3)
    snap.adapter = {}
    result = save_checkpoint(tmp_path, snap)
    assert not result.ok and "holds 0 tensors: an empty adapter is never valid" in result.error


def test_mismatch_between_disk_and_memory_is_caught(tmp_path, snapshot_factory, monkeypatch):
    from safetensors.torch import save as st_save

    def corrupting_save(tensors, metadata=None):
        return st_save({k: v + 1 for k, v in tensors.items()}, metadata=metadata)

    monkeypatch.setattr("safetensors.torch.save", corrupting_save)
    monkeypatch.setattr(save_module, "_fallback_files", raising(OSError("no fallback")))
    result = save_checkpoint(tmp_path, snapshot_factory(1))
    assert not result.ok and "saved values differ from the trained ones" in result.error


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "stray"])
def test_verify_rejects_damaged_checkpoints(tmp_path, snapshot_factory, damage):
    path = save_checkpoint(tmp_path, snapshot_factory(7)).path
    target = path / "adapter_model.safetensors"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "delete":
        (path / "optimizer.pt").unlink()
    else:
        (path / "notes.txt").write_text("hi")
    result = verify_checkpoint(path)
    assert not result.ok
    expected = {
        "truncate": "truncated",
        "flip": "sha256 mismatch",
        "delete": "optimizer.pt is missing",
        "stray": "unexpected file notes.txt",
    }[damage]
    assert expected in result.summary()


def test_resume_skips_invalid_newer_and_stale_folders(tmp_path, snapshot_factory):
    save_checkpoint(tmp_path, snapshot_factory(2))
    save_checkpoint(tmp_path, snapshot_factory(4))
    (tmp_path / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "checkpoint-50").mkdir()  # a stale empty folder from an earlier run
    (tmp_path / "checkpoint-6.tmp-abcd").mkdir()  # an interrupted save
    (tmp_path / "checkpoint-6.tmp-abcd" / "adapter_model.safetensors").write_bytes(b"x")
    removed = clean_stale(tmp_path, quiet)
    assert [p.name for p in removed] == ["checkpoint-6.tmp-abcd"]
    said = []
    assert find_resume_point([tmp_path], said.append).path.name == "checkpoint-2"
    assert [line.split(":")[0] for line in said] == [
        f"skipping {tmp_path / n}" for n in ("checkpoint-50", "checkpoint-4")
    ]
    assert "integrity.json missing or unreadable" in said[0]


def test_rotation_deletes_only_after_publish_and_keeps_newest(tmp_path, snapshot_factory, monkeypatch):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, snapshot_factory(step))
    newest = save_checkpoint(tmp_path, snapshot_factory(4)).path
    deleted = rotate(tmp_path, 2, newest, quiet)
    assert [p.name for p in deleted] == ["checkpoint-2", "checkpoint-1"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert rotate(tmp_path, 1, newest, quiet)[0].name == "checkpoint-3"
    assert verify_checkpoint(newest).ok


def test_committed_step_never_overwritten_invalid_leftover_moved(tmp_path, snapshot_factory):
    save_checkpoint(tmp_path, snapshot_factory(3))
    with pytest.raises(StepExistsError, match="refusing to overwrite .*checkpoint-3: it is a valid checkpoint"):
        save_checkpoint(tmp_path, snapshot_factory(3, seed=1))
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    result = save_checkpoint(tmp_path, snapshot_factory(3, seed=1))
    assert result.ok and verify_checkpoint(result.path).ok
    notes = [(p / "error.txt").read_text() for p in (tmp_path / layout.FAILED_DIR).iterdir()]
    assert any("replaced an invalid leftover" in n for n in notes)


def test_write_bytes_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    ckpt_io.write_bytes(tmp_path / "f", b"data")
    assert synced and (tmp_path / "f").read_bytes() == b"data"


def test_preflight_refuses_when_disk_too_small(tmp_path, snapshot_factory):
    result = save_checkpoint(tmp_path, snapshot_factory(1), min_free_disk_gb=10**9)
    # the full save is refused by the pre-flight; the small fallback is then still attempted and written
    assert result.kind == "fallback" and "--min_free_disk_gb" in result.error


def test_tensor_values_roundtrip(tmp_path, snapshot_factory):
    snap = snapshot_factory(9)
    path = save_checkpoint(tmp_path, snap).path
    from safetensors.torch import load_file

    loaded = load_file(path / "adapter_model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in snap.adapter.items())


def test_verify_never_calls_a_tmp_folder_valid_and_start_up_cleans_atomic_leftovers(tmp_path, snapshot_factory):
    good = save_checkpoint(tmp_path, snapshot_factory(3)).path
    tmp = tmp_path / f"checkpoint-3{layout.TMP_MARK}abcd"
    shutil.copytree(good, tmp)  # complete and intact, but never published
    assert verify_checkpoint(good).ok
    assert (
        verify_checkpoint(tmp).summary().endswith("an unfinished save (a temporary folder), never a valid checkpoint")
    )
    (tmp_path / f".latest{layout.TMP_MARK}4242").write_text("checkpoint-9\n")  # an atomic write cut short
    clean_stale(tmp_path, quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "latest"]


def _stop_save_writer_done():
    import threading

    for t in threading.enumerate():
        if t.name == "stop-save":
            t.join(10)


def test_stop_save_publishes_the_adapter_alone_when_the_full_save_misses_the_deadline(
    tmp_path, snapshot_factory, monkeypatch
):
    """A launcher SIGKILLs at the end of its grace period: what is ready by --stop_save_s is published, and the
    save returns then, not when a stalled disk comes back."""
    import threading
    import time

    disk_back = threading.Event()
    real_write = save_module.write_bytes

    def stalled(path, data):
        disk_back.wait(20)
        real_write(path, data)

    monkeypatch.setattr(save_module, "write_bytes", stalled)
    t0 = time.monotonic()
    result = save_checkpoint(tmp_path, snapshot_factory(7), deadline=t0 + 0.5)
    returned_after = time.monotonic() - t0
    try:
        assert returned_after < 15  # the full save is still stuck: the save did not wait for it
        assert result.kind == "fallback" and result.path == tmp_path / "checkpoint-7"
        assert "--stop_save_s" in result.error
        assert verify_checkpoint(result.path).ok and verify_checkpoint(result.path).kind == "fallback"
        assert (tmp_path / layout.LATEST).read_text() == "checkpoint-7\n"
    finally:
        disk_back.set()
    _stop_save_writer_done()  # the full folder, done late, is dropped; checkpoint-7 stays as published
    assert not [p for p in tmp_path.iterdir() if layout.TMP_MARK in p.name]
    assert json.loads((result.path / layout.TRAINER_STATE).read_text())["kind"] == "fallback"


def test_stop_save_within_the_deadline_is_full_and_leaves_nothing_else(tmp_path, snapshot_factory):
    import time

    result = save_checkpoint(tmp_path, snapshot_factory(3), deadline=time.monotonic() + 60)
    assert result.kind == "full" and result.error is None and verify_checkpoint(result.path).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "latest"]


def test_stop_save_on_a_full_disk_publishes_the_adapter_without_waiting(tmp_path, snapshot_factory, monkeypatch):
    import time

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(save_module, "write_bytes", full_disk)
    t0 = time.monotonic()
    result = save_checkpoint(tmp_path, snapshot_factory(4), deadline=t0 + 30)
    assert time.monotonic() - t0 < 20  # did not sit out the deadline
    assert result.kind == "fallback" and "No space left on device" in result.error
    assert verify_checkpoint(result.path).ok
    _stop_save_writer_done()
    assert not [p for p in tmp_path.iterdir() if layout.TMP_MARK in p.name]
