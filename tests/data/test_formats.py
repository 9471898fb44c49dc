"""The other manifest formats: the community metadata.json folder and a saved Hugging Face dataset."""

import json

import numpy as np
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
    assert second.audio_paths == [str(tmp_path / "wavs" / "ref.wav"), str(tmp_path / "wavs" / "a.wav")]
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
    import pytest

    from higgs_train.errors import ManifestError

    with pytest.raises(ManifestError, match="not a manifest folder: expected metadata.json, a saved dataset, an LJ"):
        load_manifest(tmp_path)
