"""Shared fixtures, built once per session: the tiny model, synthetic and real-voice manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach a hub

REPO = Path(__file__).resolve().parent.parent
VOICES = REPO.parent / "shared" / "data" / "voices"
VOICE_NAMES = ["belinda", "chadwick", "en_man", "en_woman", "mabel", "vex"]


def quiet(_msg: str) -> None:
    """A `say` that prints nothing."""


runner = CliRunner()  # the CLI in-process (typer): one for every test module


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from higgs_train.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    """A random-weight tiny Whisper: scoring runs end to end (its words are noise)."""
    from higgs_train.tiny import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("whisper") / "model")


@pytest.fixture(scope="session")
def listened_run(synth_manifest, tiny_model, tiny_whisper, tmp_path_factory) -> Path:
    """A 4-step run scored (real Scorer, tiny Whisper), sampled with a voice prompt at steps 2 and 4 and logged to
    TensorBoard: the one trained run the tests of what comes after training share (read it, do not change it)."""
    from higgs_train.cli import app

    out = tmp_path_factory.mktemp("listened") / "run"
    voice = synth_manifest.parent / "clips" / "clip_0.wav"
    args = train_args(synth_manifest, out, tiny_model, "--max_steps", "4", "--save_steps", "2", "--eval_fraction")
    args += ["0.34", "--score_steps", "2", "--score_samples", "2", "--asr_model", str(tiny_whisper)]
    args += ["--sample_steps", "2", "--sample_text", "hello there", "--sample_ref_audio", str(voice)]
    args += ["--report_to", "tensorboard"]
    result = runner.invoke(app, [*args, "--sample_ref_text", "The quick brown fox jumps over the lazy dog."])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def synth_manifest(tmp_path_factory) -> Path:
    from higgs_train.tiny import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def voices() -> Path:
    if not VOICES.is_dir():
        pytest.skip(
            f"real voice clips not found at {VOICES} (../shared is only present in the project checkout and CI)"
        )
    return VOICES


@pytest.fixture(scope="session")
def voice_manifest(voices, tmp_path_factory) -> Path:
    """The six real clips, with paths relative to the manifest, one voice-cloning row."""
    folder = tmp_path_factory.mktemp("voices")
    (folder / "clips").symlink_to(voices)
    rows = [
        {"audio_filepath": f"clips/{n}.wav", "text": (voices / f"{n}.txt").read_text().strip()} for n in VOICE_NAMES
    ]
    rows.append(
        {
            "audio_filepath": "clips/en_man.wav",
            "text": (voices / "en_man.txt").read_text().strip(),
            "ref_audio_filepath": "clips/en_woman.wav",
            "ref_text": (voices / "en_woman.txt").read_text().strip(),
        }
    )
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def load_base(model: str | Path):
    """Model, processor and audio tokenizer of a model folder, through the same `from_pretrained` code a run uses."""
    from types import SimpleNamespace

    from higgs_train.model import check_pair, load_lm, load_processor, quiet_libraries

    quiet_libraries()
    lm, processor = load_lm(str(model)), load_processor(str(model))
    check_pair(lm, processor, str(model))
    return SimpleNamespace(model=lm, processor=processor, audio_tokenizer=processor.audio_tokenizer)


@pytest.fixture(scope="session")
def base(tiny_model):
    """The tiny model loaded through the same code a run uses (do not train it in place)."""
    return load_base(tiny_model)


def run_cfg(manifest: Path, out: Path, model: Path, **flags):
    """A TrainConfig for a run of `manifest` into `out` on `model`, flags as keywords (build_config's names)."""
    from higgs_train.config import build_config

    return build_config({"train_manifest": str(manifest), "output_dir": str(out), "model": str(model), **flags})


def train_args(manifest: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["--train_manifest", str(manifest), "--output_dir", str(out), "--model", str(model), *extra]


def wait_for_steps(run_dir: Path, steps: int, timeout: float = 120) -> None:
    """Block until a training process has logged `steps` rows to metrics.jsonl (or the timeout passes)."""
    import time

    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= steps):
        time.sleep(0.2)


@pytest.fixture
def small_disk(tmp_path):
    """A real file system that fills up: a tmpfs of a given size mounted under tmp_path (root only).

    Use as `folder = small_disk(size_kb)`; unmounted at the end of the test.
    """
    import subprocess

    mounts = []

    def mount(size_kb: int) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill_disk(folder: Path) -> Path:
    """Write a file until the file system under `folder` is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 1024)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def raising(error: BaseException):
    """A stand-in that raises `error` whatever it is called with (an injected fault)."""

    def fail(*args, **kwargs):
        raise error

    return fail


SHARDS, ROWS_PER_SHARD = 4, 3  # of stream_corpus


@pytest.fixture(scope="session")
def stream_corpus(synth_manifest, tmp_path_factory):
    """Four parquet shards as a hub download leaves them (Audio-typed bytes), 12 rows: the synthetic clips again,
    each row's text numbered so every row is told apart."""
    import datasets

    rows = [json.loads(line) for line in synth_manifest.read_text().splitlines()]
    folder = tmp_path_factory.mktemp("corpus")
    n = 0
    for s in range(SHARDS):
        part = {"audio": [], "text": []}
        for _ in range(ROWS_PER_SHARD):
            row = rows[n % len(rows)]
            clip = synth_manifest.parent / row["audio_filepath"]
            part["audio"].append({"bytes": clip.read_bytes(), "path": clip.name})
            part["text"].append(f"{row['text']} Row {n}.")
            n += 1
        ds = datasets.Dataset.from_dict(part).cast_column("audio", datasets.Audio())
        (folder / "data").mkdir(exist_ok=True)
        ds.to_parquet(str(folder / "data" / f"train-{s:05d}-of-{SHARDS:05d}.parquet"))
    return folder
