"""The other manifest formats: the community metadata.json folder and Hugging Face datasets (saved, parquet shards,
hf:// from the local cache)."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from higgs_train.data.audio import load_audio
from higgs_train.data.formats import EMBEDDED
from higgs_train.data.manifest import load_manifest


def tone(path, seconds=0.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    return path


def test_metadata_json_folder(tmp_path):
    (tmp_path / "wavs").mkdir()
    tone(tmp_path / "wavs" / "a.wav")
    tone(tmp_path / "wavs" / "ref.wav")
    (tmp_path / "a.txt").write_text("hello there\n")
    meta = {
        "samples": [
            {
                "id": "a",
                "audio_file": "wavs/a.wav",
                "transcript_file": "a.txt",
                "speaker_id": "s1",
                "scene": "quiet room",
            },
            {
                "id": "b",
                "audio_file": "wavs/a.wav",
                "transcript_file": "a.txt",
                "ref_audio_file": "wavs/ref.wav",
                "ref_transcript": "reference",
            },
            {"id": "c", "audio_file": "wavs/a.wav", "transcript_file": "missing.txt"},
        ]
    }
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    problems = []
    first, second = load_manifest(tmp_path, problems)
    assert first.target_audio == str(tmp_path / "wavs" / "a.wav") and first.speaker == "s1"
    assert [(t.role, t.text) for t in first.turns if t.text][1:] == [("scene", "quiet room"), ("user", "hello there")]
    assert second.audio_paths == (str(tmp_path / "wavs" / "ref.wav"), str(tmp_path / "wavs" / "a.wav"))
    assert [(p.reason, p.where) for p in problems] == [
        ("missing transcript", f"{tmp_path}/metadata.json:samples[2] (id c)")
    ]


def test_saved_hf_dataset_with_embedded_audio(tmp_path):
    import datasets

    clip = tone(tmp_path / "x.wav", seconds=0.25, rate=22050)
    ds = datasets.Dataset.from_dict(
        {"audio": [{"bytes": clip.read_bytes(), "path": None}] * 2, "text": ["one", "two"], "speaker": ["a", "b"]}
    ).cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "ds"))
    samples = load_manifest(tmp_path / "ds")
    assert [s.speaker for s in samples] == ["a", "b"]
    assert samples[1].target_audio == f"{EMBEDDED}{(tmp_path / 'ds').resolve()}::1::audio"
    wave = load_audio(samples[1].target_audio, 24000)
    assert abs(len(wave) - 6000) <= 1


def test_unknown_folder_is_a_clear_error(tmp_path):
    from higgs_train.errors import ManifestError

    with pytest.raises(ManifestError, match="not a manifest folder: expected metadata.json, a saved dataset, an LJ"):
        load_manifest(tmp_path)


def _voice_rows(voices, names):
    return {
        "audio": [{"bytes": (voices / f"{n}.wav").read_bytes(), "path": f"{n}.wav"} for n in names],
        "text": [(voices / f"{n}.txt").read_text().strip() for n in names],
        "speaker": names,
    }


def _write_parquet(rows: dict, path):
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio()).to_parquet(str(path))  # typed as Audio
    return path


def test_parquet_shards_as_a_hub_download_leaves_them(voices, tmp_path):
    """data/train-0000N-of-00002.parquet (Audio column of bytes) beside a test split: the train shards are read,
    and each clip decodes to what was put in."""
    from higgs_train.data.formats import detect_format

    folder = tmp_path / "voices-dataset"
    (folder / "README.md").parent.mkdir()
    (folder / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n")
    _write_parquet(_voice_rows(voices, ["en_man", "en_woman"]), folder / "data" / "train-00000-of-00002.parquet")
    _write_parquet(_voice_rows(voices, ["belinda"]), folder / "data" / "train-00001-of-00002.parquet")
    _write_parquet(_voice_rows(voices, ["vex"]), folder / "data" / "test-00000-of-00001.parquet")
    assert detect_format(folder) == "parquet"
    samples = load_manifest(folder)
    assert [s.speaker for s in samples] == ["en_man", "en_woman", "belinda"]  # the train split only
    assert samples[0].target_text == (voices / "en_man.txt").read_text().strip()
    assert samples[2].target_audio.startswith(EMBEDDED)
    expected = load_audio(str(voices / "belinda.wav"), 24000)
    assert np.array_equal(load_audio(samples[2].target_audio, 24000).numpy(), expected.numpy())


def test_parquet_of_paths_and_other_column_names(voices, tmp_path):
    """A plain parquet file (no datasets metadata) with relative paths, in columns named clip and words."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from higgs_train.data.formats import Columns
    from higgs_train.errors import ManifestError

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.wav").write_bytes((voices / "mabel.wav").read_bytes())
    pq.write_table(pa.table({"clip": ["clips/a.wav"], "words": ["Hello."]}), tmp_path / "rows.parquet")
    with pytest.raises(ManifestError, match=r"needs an audio column .* or --audio_column\) .* it has clip, words"):
        load_manifest(tmp_path / "rows.parquet")
    (sample,) = load_manifest(tmp_path / "rows.parquet", columns=Columns(text="words", audio="clip"))
    assert sample.target_audio == str(tmp_path / "clips" / "a.wav") and sample.target_text == "Hello."


@pytest.fixture
def hub_cache(voices, tmp_path, monkeypatch):
    """The local datasets cache as an online `load_dataset("someone/voices")` leaves it, made from parquet the test
    writes: what makes a hub dataset usable offline."""
    import datasets
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    from higgs_train.data.formats import open_dataset, undecoded

    open_dataset.cache_clear()  # a spec loaded by an earlier test names another cache
    undecoded.cache_clear()
    shard = _write_parquet(_voice_rows(voices, ["en_man", "chadwick"]), tmp_path / "src" / "train-0.parquet")
    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    files = DataFilesDict.from_local_or_remote({"train": [str(shard)]})
    builder = Parquet(data_files=files, dataset_name="voices", hash="0123abcd", config_name="default")
    builder.download_and_prepare()
    config_dir = Path(builder.cache_dir).parents[1]  # CACHE/voices/default-<files hash>/0.0.0/0123abcd
    (cache / "someone___voices").mkdir()
    config_dir.rename(cache / "someone___voices" / "default")  # CACHE/someone___voices/default/0.0.0/<commit>
    return cache


def test_a_hub_dataset_loads_offline_from_the_cache(hub_cache):
    from higgs_train.errors import ManifestError

    samples = load_manifest("hf://someone/voices")
    assert [s.speaker for s in samples] == ["en_man", "chadwick"]
    assert samples[1].target_audio == f"{EMBEDDED}hub=someone/voices:train::1::audio"
    assert len(load_audio(samples[1].target_audio, 24000)) > 24000
    with pytest.raises(ManifestError, match="without network it must be in the local datasets cache"):
        load_manifest("hf://someone/not-cached")
    with pytest.raises(ManifestError, match="a hub dataset is hf://OWNER/NAME or hf://OWNER/NAME:SPLIT"):
        load_manifest("hf://just-a-name")


def test_training_from_a_hub_dataset(hub_cache, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from higgs_train.cli import app

    out = tmp_path / "run"
    args = ["--train_manifest", "hf://someone/voices:train", "--output_dir", str(out), "--model", str(tiny_model)]
    result = CliRunner().invoke(app, [*args, "--max_steps", "1", "--max_duration", "60"])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint-1").is_dir()
    assert json.loads((out / "data_report.json").read_text())["good"] == 2
