"""Trackers through accelerate: TensorBoard, W&B (offline) and MLflow (a file store) get the same rows, the config
and the sample audio; a resumed run logs into the same tracker runs."""

import json
import struct

import pytest

from higgs_train.cli import app
from higgs_train.config import tracker_problems
from tests.conftest import runner, train_args


def test_report_to_names_are_checked_and_a_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    assert tracker_problems("none") == [] and tracker_problems("tensorboard, wandb") == []
    assert "takes none or any of tensorboard, wandb, mlflow" in tracker_problems("comet")[0]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    assert tracker_problems("tensorboard,mlflow") == [
        "--report_to mlflow: the mlflow package is not installed; pip install -e '.[mlflow]'"
    ]


def wandb_records(path):
    """The records of an offline W&B run file (LevelDB log framing: 32 KiB blocks of CRC, length, type + chunk)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL or FIRST starts a record; MIDDLE, LAST extend it
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


@pytest.fixture
def offline_trackers(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    yield tmp_path / "mlruns"
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def test_every_tracker_gets_the_rows_config_and_audio_and_a_resume_continues_the_same_runs(
    synth_manifest, tiny_model, tmp_path, offline_trackers
):
    out = tmp_path / "run"
    common = ["--save_steps", "2", "--report_to", "tensorboard,wandb,mlflow", "--sample_steps", "2"]
    args = train_args(synth_manifest, out, tiny_model, *common, "--sample_text", "hello there", "--lr", "1e-2")
    first = runner.invoke(app, [*args, "--max_steps", "2"])
    assert first.exit_code == 0, first.output
    ids = json.loads((out / "trackers.json").read_text())
    assert set(ids) == {"wandb", "mlflow"}
    second = runner.invoke(app, [*args, "--max_steps", "4"])
    assert second.exit_code == 0, second.output
    assert "resumed from" in second.output
    assert json.loads((out / "trackers.json").read_text()) == ids  # the same tracker runs

    (mlrun,) = offline_trackers.glob(f"*/{ids['mlflow']}")  # one MLflow run over both starts
    steps = [int(line.split()[2]) for line in (mlrun / "metrics" / "train" / "loss").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (mlrun / "params" / "lr").read_text() == "0.01"
    assert (mlrun / "artifacts" / "samples" / "step-2" / "step-2.wav").stat().st_size > 44
    assert (mlrun / "artifacts" / "samples" / "step-4" / "step-4.wav").is_file()

    runs = sorted((out / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    assert len(runs) == 2  # one folder per start, one W&B run id
    records = [r for run in runs for r in wandb_records(next(run.glob("*.wandb")))]
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records]
    history = [h for h in history if h]
    assert [h["_step"] for h in history] == [1, 2, 3, 4] and all("train/loss" in h for h in history)
    audio = [h for h in history if h.get("sample/_type") == "audio-file"]
    assert len(audio) == 2 and len(list(runs[0].glob("files/media/audio/sample_2_*.wav"))) == 1
    config = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for r in records for i in r.config.update}
    assert config["lr"] == 0.01 and config["model"] == str(tiny_model)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"audio": 0}).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4] and "sample" in events.Tags()["audio"]
