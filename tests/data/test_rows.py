"""A changed manifest on resume is never silent: every kind of change is named, and both ways on are exact."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from higgs_train.cli import app
from higgs_train.data.manifest import Sample, Turn
from higgs_train.data.rows import data_identity, describe_change, remember
from tests.conftest import runner, train_args


def rows(n):
    return [
        Sample(f"m:{i}", (Turn("user", text=f"text {i}"), Turn("assistant", audio=f"/c/{i}.wav"))) for i in range(n)
    ]


def keys(samples, **changed):
    return {s.target_audio: changed.get(s.target_audio, f"key-{s.target_audio}") for s in samples}


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda r: (r + rows(7)[5:], {}), "2 added (5 rows then, 7 now; a changed row has another text or clip)"),
        (lambda r: (r[:3], {}), "2 removed (5 rows then, 3 now; a changed row has another text or clip)"),
        (lambda r: (r[::-1], {}), "the same 5 rows in another order"),
        (
            lambda r: (r, {"/c/1.wav": "new bytes"}),
            "1 changed (5 rows then, 5 now; a changed row has another text or clip)",
        ),
        (
            lambda r: ([r[0], Sample("m:1", (Turn("user", text="edited"), r[1].turns[1])), *r[2:]], {}),
            "1 changed (5 rows then, 5 now; a changed row has another text or clip)",
        ),
    ],
    ids=["appended", "removed", "reordered", "clip replaced", "text edited"],
)
def test_each_kind_of_change_is_named(tmp_path, change, expected):
    before = rows(5)
    old = data_identity(before, keys(before))
    remember(old, tmp_path)
    after, replaced = change(before)
    new = data_identity(after, keys(after, **replaced))
    assert new.digest != old.digest
    assert describe_change(old.digest, old.rows, new, tmp_path) == expected
    assert data_identity(before, keys(before)).digest == old.digest  # the same rows: the same digest
    (tmp_path / "cache" / "rows" / f"{old.digest}.npz").unlink()
    assert describe_change(old.digest, old.rows, new, tmp_path) == f"other rows (5 rows then, {new.rows} now)"


@pytest.fixture(scope="module")
def saved_run(synth_manifest, tiny_model, tmp_path_factory):
    """A 2-step run over the six synthetic rows, checkpointed at step 2, with a copy of its manifest and clips."""
    folder = tmp_path_factory.mktemp("changing")
    shutil.copytree(synth_manifest.parent, folder / "data")
    out = folder / "run"
    args = train_args(folder / "data" / "train.jsonl", out, tiny_model, "--max_steps", "2", "--save_steps", "2")
    result = runner.invoke(app, [*args, "--no-group_by_length"])
    assert result.exit_code == 0, result.output
    return folder


def _copy(saved_run, tmp_path):
    shutil.copytree(saved_run, tmp_path / "x")
    return tmp_path / "x" / "data" / "train.jsonl", tmp_path / "x" / "run"


def _resume(manifest, out, tiny_model, *extra):
    args = train_args(manifest, out, tiny_model, "--max_steps", "4", "--save_steps", "2", "--no-group_by_length")
    return runner.invoke(app, [*args, *extra])


def test_a_resume_on_other_rows_stops_before_the_model_loads_saying_what_changed(saved_run, tiny_model, tmp_path):
    manifest, out = _copy(saved_run, tmp_path)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines, lines[0].replace("The quick", "A quick")]) + "\n")  # one row appended
    result = _resume(manifest, out, tiny_model)
    assert result.exit_code == 2, result.output
    assert (
        "error: the training data changed since checkpoint-2 was saved: 1 added (6 rows then, 7 now; a changed row "
        "has another text or clip). Its data position counts the old rows; rerun with --on_data_change restart_epoch "
        "(keep the step, optimizer and schedule, start a fresh epoch order over the new rows) or --on_data_change "
        "continue (keep the position as samples seen)"
    ) in " ".join(result.output.split())
    assert "LoRA r=" not in result.output  # stopped before the model loaded
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_replaced_clip_is_changed_data(saved_run, tiny_model, tmp_path):
    manifest, out = _copy(saved_run, tmp_path)
    clip = manifest.parent / "clips" / "clip_3.wav"
    wave, rate = sf.read(clip)
    sf.write(clip, np.flip(wave).copy(), rate)  # same path, other bytes
    result = _resume(manifest, out, tiny_model)
    assert result.exit_code == 2 and "1 changed (6 rows then, 6 now" in " ".join(result.output.split())


def test_the_same_rows_in_another_order_are_changed_data(saved_run, tiny_model, tmp_path):
    manifest, out = _copy(saved_run, tmp_path)
    manifest.write_text("\n".join(reversed(manifest.read_text().splitlines())) + "\n")
    result = _resume(manifest, out, tiny_model)
    assert result.exit_code == 2 and "the same 6 rows in another order" in result.output


@pytest.mark.parametrize("choice", ["restart_epoch", "continue"])
def test_on_data_change_moves_the_position_and_records_the_new_rows(saved_run, tiny_model, tmp_path, choice):
    manifest, out = _copy(saved_run, tmp_path)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:4]) + "\n")  # two rows removed: 4 rows, batch 1, 4 batches an epoch
    before = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["progress"]
    result = _resume(manifest, out, tiny_model, "--on_data_change", choice)
    assert result.exit_code == 0, result.output
    assert "warning: the training data changed (2 removed (6 rows then, 4 now" in result.output
    after = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["progress"]
    assert before["micro_batches"] == 2 and before["data_rows"] == 6
    # restart_epoch: epoch 1 of the new rows starts at micro-batch 4; continue: 2 samples seen = micro-batch 2
    assert after["micro_batches"] == {"restart_epoch": 6, "continue": 4}[choice]
    assert after["epoch"] == {"restart_epoch": 1, "continue": 0}[choice]
    assert (after["data_rows"], after["step"]) == (4, 4) and after["data_digest"] != before["data_digest"]
    again = _resume(manifest, out, tiny_model, "--max_steps", "5")  # the new rows are now the run's: no word
    assert again.exit_code == 0 and "training data changed" not in again.output, again.output


def test_the_same_rows_moved_to_another_folder_are_the_same_data():
    here = rows(3)
    moved = [Sample(s.source, (s.turns[0], Turn("assistant", audio="/elsewhere" + s.target_audio))) for s in here]
    same_bytes = {"/elsewhere" + k: v for k, v in keys(here).items()}
    assert data_identity(here, keys(here)).digest == data_identity(moved, same_bytes).digest


def test_a_checkpoint_of_another_identity_recipe_is_not_compared(saved_run, tiny_model, tmp_path):
    """An older higgs-train recorded no digest, or one made another way: the resume goes on (nothing to compare)."""
    manifest, out = _copy(saved_run, tmp_path)
    state_file = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["progress"]["data_digest"] = "rows0-0123"
    state_file.write_text(json.dumps(state))
    integrity_file = out / "checkpoint-2" / "integrity.json"  # the folder's checksums follow the edit
    integrity = json.loads(integrity_file.read_text())
    data = state_file.read_bytes()
    integrity["files"]["trainer_state.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    integrity_file.write_text(json.dumps(integrity))
    manifest.write_text("\n".join(manifest.read_text().splitlines()[:5]) + "\n")
    result = _resume(manifest, out, tiny_model)
    assert result.exit_code == 0 and "training data changed" not in result.output, result.output
