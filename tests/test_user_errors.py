"""Every user error of every command is one line naming the flag or file and the fix, with exit 2 (input) or 3
(checkpoint); nothing half-written is left behind."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from higgs_train.cli import app
from tests.conftest import fill_disk, runner, train_args


def one_line_error(result, code: int, *parts: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for part in parts:
        assert part in errors[0], errors[0]


@pytest.mark.parametrize(("flag", "value"), [("--lr", "inf"), ("--max_grad_norm", "nan")])
def test_non_finite_numbers_are_refused(synth_manifest, tiny_model, tmp_path, flag, value):
    result = runner.invoke(app, [*train_args(synth_manifest, tmp_path / "r", tiny_model), flag, value])
    one_line_error(result, 2, f"{flag} must be a finite number, got {value}")


def test_checkpoints_of_a_missing_folder(tmp_path):
    one_line_error(runner.invoke(app, ["checkpoints", str(tmp_path / "nope")]), 2, "no such run folder")


def test_init_tiny_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    one_line_error(runner.invoke(app, ["init-tiny", str(tmp_path)]), 2, "exists and is not an empty folder")
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "  "], "--text is empty; give the words to speak"),
        (["--text", "hi", "--out", "{tmp}"], "is a folder; give a file name such as"),
        (["--text", "hi", "--out", "{tmp}/a.mp3"], "generate writes WAV; give a name ending in .wav"),
        (
            ["--text", "hi", "--ref_audio", "{tmp}/no.wav", "--ref_text", "x"],
            "no.wav: no such file; pass the reference",
        ),
    ],
)
def test_generate_refuses_what_would_write_nothing_useful(tiny_model, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one_line_error(runner.invoke(app, ["generate", "--model", str(tiny_model), *args]), 2, message)
    assert not list(tmp_path.iterdir())


def test_local_adapter_folder_without_its_files_fails_at_once(tiny_model, tmp_path):
    (tmp_path / "ckpt").mkdir()
    out = tmp_path / "a.wav"
    result = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_model),
            "--adapter",
            str(tmp_path / "ckpt"),
            "--text",
            "hi",
            "--out",
            str(out),
        ],
    )
    one_line_error(result, 3, "adapter_config.json and adapter_model.safetensors not found; pass a checkpoint folder")


@pytest.fixture(scope="module")
def trained(synth_manifest, tiny_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("merge") / "run"
    result = runner.invoke(app, train_args(synth_manifest, run, tiny_model, "--max_steps", "1"))
    assert result.exit_code == 0, result.output
    return run / "checkpoint-1"


def test_merge_refuses_an_output_inside_its_inputs(tiny_model, trained, tmp_path):
    before = sorted(p.name for p in tiny_model.iterdir())
    for output in (tiny_model, tiny_model / "merged", trained / "merged"):
        result = runner.invoke(
            app, ["merge", "--model", str(tiny_model), "--adapter", str(trained), "--output", str(output)]
        )
        one_line_error(result, 2, f"--output {output} is", "writing there would overwrite what the command reads")
    assert sorted(p.name for p in tiny_model.iterdir()) == before
    (tmp_path / "exists").mkdir()
    result = runner.invoke(
        app, ["merge", "--model", str(tiny_model), "--adapter", str(trained), "--output", str(tmp_path / "exists")]
    )
    one_line_error(result, 2, "already exists; choose a new folder")


def test_merge_on_a_full_disk_leaves_no_folder_that_looks_usable(tiny_model, trained, small_disk):
    disk = small_disk(600)  # the tiny merged model needs more than this once the disk is part-filled
    filler = fill_disk(disk)
    with open(filler, "r+b") as f:
        f.truncate(filler.stat().st_size - 200 * 1024)  # room for part of the model, not all of it
    result = runner.invoke(
        app, ["merge", "--model", str(tiny_model), "--adapter", str(trained), "--output", str(disk / "merged")]
    )
    one_line_error(result, 3, f"--output {disk / 'merged'}: cannot write the merged model", "nothing was left behind")
    assert sorted(p.name for p in disk.iterdir() if not p.name.endswith(".lock")) == ["filler"]


def test_prep_on_a_full_disk_is_one_line_and_leaves_no_truncated_clip(voices, small_disk):
    disk = small_disk(256)
    fill_disk(disk).unlink()
    (disk / "out").mkdir()
    filler = fill_disk(disk)
    with open(filler, "r+b") as f:
        f.truncate(filler.stat().st_size - 60 * 1024)  # a little room: the first clip does not fit
    result = runner.invoke(app, ["prep", str(voices / "en_woman.wav"), "--output_dir", str(disk / "out")])
    one_line_error(result, 2, f"--output_dir {disk / 'out'}: cannot write", "No space left on device", "run prep again")
    clips = disk / "out" / "clips"
    assert not clips.exists() or not list(clips.iterdir())


def test_a_missing_model_folder_is_one_line(synth_manifest, tmp_path):
    result = runner.invoke(app, train_args(synth_manifest, tmp_path / "r", tmp_path / "nope", "--max_steps", "1"))
    one_line_error(result, 2, f"--model {tmp_path / 'nope'}: no such folder")


def test_a_folder_that_is_not_higgs_audio_is_one_line(synth_manifest, tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = runner.invoke(app, train_args(synth_manifest, tmp_path / "r", tmp_path / "bert", "--max_steps", "1"))
    one_line_error(result, 2, "is a 'bert' model, not Higgs Audio v2", "pass a Higgs Audio v2 checkpoint")


@pytest.mark.parametrize("damage", ["missing", "renamed", "reshaped"])
def test_a_model_with_a_missing_renamed_or_reshaped_tensor_never_trains_from_random(
    synth_manifest, tiny_model, tmp_path, damage
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    tensors = load_file(model / "model.safetensors")
    name = "model.layers.1.self_attn.q_proj.weight"
    if damage == "missing":
        del tensors[name]
    elif damage == "renamed":
        tensors["model.layers.1.self_attn.query.weight"] = tensors.pop(name)
    else:
        tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    result = runner.invoke(app, train_args(synth_manifest, tmp_path / "r", model, "--max_steps", "1"))
    expected = {
        "missing": "1 weights missing (they would be random), e.g. model.layers.1.self_attn.q_proj.weight",
        "renamed": "1 tensors the model does not use, e.g. model.layers.1.self_attn.query.weight",
        "reshaped": "model.layers.1.self_attn.q_proj.weight",
    }[damage]
    one_line_error(result, 2, f"--model {model}: ", expected, "Likely cause:")
    assert not (tmp_path / "r" / "checkpoint-1").exists()


def test_a_read_only_file_system_is_named_as_such(synth_manifest, tiny_model, small_disk):
    import subprocess

    disk = small_disk(256)
    if subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only here")
    result = runner.invoke(app, train_args(synth_manifest, disk / "run", tiny_model, "--max_steps", "1"))
    one_line_error(result, 2, f"--output_dir {disk / 'run'}: cannot write there (a read-only file system)")


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_no_command_writes_an_output_over_its_inputs(synth_manifest, tiny_model, trained, tmp_path):
    """Equal to, inside or holding an input: refused before anything is written, and the inputs are unchanged."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    run = trained.parent
    data = synth_manifest.parent
    clip = str(data / "clips" / "clip_0.wav")
    cases = {
        "train into the model": train_args(synth_manifest, model, model),
        "train inside the model": train_args(synth_manifest, model / "run", model),
        "train holding the manifest": train_args(synth_manifest, data, model),
        "prepare into the model": ["prepare", *train_args(synth_manifest, model, model)],
        "export inside the checkpoint": ["export", str(run), str(trained / "shipped")],
        "export into the run": ["export", str(run), str(run)],
        "convert inside its source": ["convert", str(model), str(model / "hf")],
        "generate over the reference": [
            "generate",
            "--model",
            str(model),
            "--text",
            "hi",
            "--ref_audio",
            clip,
            "--ref_text",
            "hi",
            "--out",
            clip,
        ],
        "prep into its recordings": ["prep", str(data), "--output_dir", str(data / "clean")],
    }
    before = {f: _snapshot(f) for f in (model, run, data)}
    for name, args in cases.items():
        result = runner.invoke(app, args)
        one_line_error(result, 2, "writing there would overwrite what the command reads")
        assert {f: _snapshot(f) for f in (model, run, data)} == before, name
