"""The memo of prepared rows: a warm start parses nothing and gets the same examples; any change of what the rows
were made from prepares again."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

import higgs_train.data.prepare as prepare_module
from higgs_train.config import build_config
from higgs_train.data.memo import MEMO_SUBDIR
from higgs_train.data.pipeline import build_training_data
from higgs_train.errors import ManifestError


@pytest.fixture
def parsed(monkeypatch):
    """How many times a manifest was parsed."""
    calls = []
    real = prepare_module.load_manifest
    monkeypatch.setattr(prepare_module, "load_manifest", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


@pytest.fixture
def data(synth_manifest, tmp_path):
    """A copy of the synthetic data that a test may change."""
    folder = tmp_path / "data"
    shutil.copytree(synth_manifest.parent, folder)
    return folder / synth_manifest.name


def _build(base, manifest, out, **extra):
    cfg = build_config({"train_manifest": str(manifest), "output_dir": str(out), "model": "unused", **extra})
    said = []
    return build_training_data(cfg, base.processor, 8, said.append, max_positions=4096), said


def _same(a, b) -> None:
    for part in ("train", "eval"):
        x, y = getattr(a, part), getattr(b, part)
        assert len(x) == len(y) and np.array_equal(x.lengths, y.lengths)
        for i in range(len(x)):
            ex, ey = x[i], y[i]
            assert np.array_equal(ex.input_ids, ey.input_ids) and np.array_equal(ex.labels, ey.labels)
            assert np.array_equal(ex.audio_frames, ey.audio_frames)
    assert a.identity.digest == b.identity.digest and np.array_equal(a.identity.names, b.identity.names)
    assert a.stats == b.stats and a.eval_samples == b.eval_samples
    assert (a.chars_per_second, a.rates_by_language) == (b.chars_per_second, b.rates_by_language)


def test_a_warm_start_parses_nothing_and_gets_the_same_data(base, data, tmp_path, parsed):
    first, _ = _build(base, data, tmp_path / "out", eval_fraction=0.34)
    assert len(parsed) == 1 and len(list((tmp_path / "out" / MEMO_SUBDIR).iterdir())) == 1
    again, said = _build(base, data, tmp_path / "out", eval_fraction=0.34)
    assert len(parsed) == 1  # the memo: no row parsed, validated or measured again
    assert any(line.startswith("data: ") for line in said)  # the statistics are still said
    _same(first, again)
    assert len(again.train) == 4 and len(again.eval_samples) == 2


def test_another_seed_of_the_split_or_another_limit_prepares_again(base, data, tmp_path, parsed):
    _build(base, data, tmp_path / "out", eval_fraction=0.34)
    _build(base, data, tmp_path / "out", eval_fraction=0.34, seed=7)
    _build(base, data, tmp_path / "out", eval_fraction=0.34, seed=7, max_duration=100.0)
    assert len(parsed) == 3


def test_an_edited_manifest_prepares_again(base, data, tmp_path, parsed):
    _build(base, data, tmp_path / "out")
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # the same rows, another order
    again, _ = _build(base, data, tmp_path / "out")
    assert len(parsed) == 2
    fresh, _ = _build(base, data, tmp_path / "fresh")
    _same(again, fresh)


def test_a_replaced_clip_prepares_again_and_is_encoded_again(base, data, tmp_path, parsed):
    first, _ = _build(base, data, tmp_path / "out")
    clip = next(data.parent.rglob("*.wav"))
    wave, rate = sf.read(clip)
    sf.write(clip, wave * 0.5, rate)  # the same path, other bytes
    again, said = _build(base, data, tmp_path / "out")
    assert len(parsed) == 2 and any(line.startswith("encoding: 1 clips") for line in said)
    assert again.identity.digest != first.identity.digest
    fresh, _ = _build(base, data, tmp_path / "fresh")
    _same(again, fresh)


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_a_damaged_memo_or_cache_prepares_again(base, data, tmp_path, parsed, damage):
    first, _ = _build(base, data, tmp_path / "out")
    (memo,) = (tmp_path / "out" / MEMO_SUBDIR).iterdir()
    if damage == "truncate":
        (memo / "train.arrow").write_bytes((memo / "train.arrow").read_bytes()[:50])
    else:  # the token cache is gone: the memo's rows cannot be found
        shutil.rmtree(tmp_path / "out" / "cache" / "tokens")
    again, _ = _build(base, data, tmp_path / "out")
    assert len(parsed) == 2
    _same(first, again)


def test_a_remembered_bad_row_is_judged_by_the_current_policy(base, data, tmp_path, parsed):
    with open(data, "a") as f:
        f.write('{"audio_filepath": "missing.wav", "text": "gone"}\n')
    _, said = _build(base, data, tmp_path / "out", on_bad_sample="skip")
    assert any("skipping 1 of 7 rows" in line for line in said)
    _, said = _build(base, data, tmp_path / "out", on_bad_sample="skip")
    assert len(parsed) == 1 and any("skipping 1 of 7 rows" in line for line in said)
    with pytest.raises(ManifestError, match="1 of 7 rows cannot be trained on"):
        _build(base, data, tmp_path / "out", on_bad_sample="error")
    assert len(parsed) == 1
